"""Recording points inside a forward pass (attention probabilities, MoE routing).

Models call `recorder.record(name, layer, tensor)` only when a recorder was passed in, so a
normal forward pass pays nothing. A `Recorder` keeps one `Step` per forward call: detached
numpy copies keyed by `(name, layer)`, never views of buffers the engine reuses.

Names: "attn_probs" [H, T, S], "moe_topk_ids" [T, k], "moe_topk_weights" [T, k],
"moe_probs" [T, n_expert]. T = tokens in this call, S = key positions (start_pos + T).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Step:
    """Everything recorded during one forward call."""

    start_pos: int
    n_tokens: int
    data: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def get(self, name: str, layer: int) -> np.ndarray | None:
        return self.data.get((name, layer))

    def layers(self, name: str) -> list[int]:
        return sorted(layer for (n, layer) in self.data if n == name)


class Recorder:
    """Collects named tensors per forward call; `names=None` records every name."""

    def __init__(self, names: Iterable[str] | None = None, max_steps: int | None = None):
        self.names = frozenset(names) if names is not None else None
        self.max_steps = max_steps  # keep only the most recent steps (bounds memory)
        self.steps: list[Step] = []

    def wants(self, name: str) -> bool:
        return self.names is None or name in self.names

    def begin_step(self, start_pos: int, n_tokens: int) -> None:
        """Called by the model at the start of each forward call."""
        self.steps.append(Step(start_pos, n_tokens))
        if self.max_steps is not None and len(self.steps) > self.max_steps:
            del self.steps[: len(self.steps) - self.max_steps]

    def record(self, name: str, layer: int, tensor: torch.Tensor) -> None:
        if not self.wants(name):
            return
        if not self.steps:  # recording outside a model's forward (e.g. a unit test)
            self.begin_step(0, tensor.shape[-2] if tensor.dim() >= 2 else 1)
        t = tensor.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        self.steps[-1].data[(name, layer)] = t.numpy().copy()  # never a view of engine buffers

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def clear(self) -> None:
        self.steps.clear()
