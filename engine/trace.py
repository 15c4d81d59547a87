"""Recording points inside a forward pass (attention probabilities, MoE routing, residuals).

Models call `recorder.record(name, layer, tensor)` only when a recorder was passed in, so a
normal forward pass pays nothing. A `Recorder` keeps one `Step` per forward call: detached
numpy copies keyed by `(name, layer)`, never views of buffers the engine reuses.

Names: "attn_probs" [H, T, S], "moe_topk_ids" [T, k], "moe_topk_weights" [T, k],
"moe_probs" [T, n_expert], "resid" [T, n_embd] (the residual stream after block `layer`),
"attn_sink" [H, T] (gpt-oss: the softmax share of each head's sink; attn_probs rows sum to 1 - it).
T = tokens in this call, S = key positions (start_pos + T).

Two ways to keep memory bounded on long sequences:
- `Recorder(rows=(a, b))` keeps only the query rows at absolute positions [a, b) of the
  row-indexed names ("attn_probs", "resid"), slicing before anything is copied; a step with
  no row in range makes `wants()` false for them, so the model skips computing them;
- `LiveTrace` (for generation, read by another thread) keeps the routing of every token but
  only the newest step's last attention row per layer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

# Names whose query/token axis the row filter slices, and which axis that is.
ROW_AXIS = {"attn_probs": -2, "resid": 0, "attn_sink": -1}
# The last two exist only for routers with a selection bias / expert groups (engine/moe.py):
# asking for them costs the other routers nothing.
ROUTING_NAMES = ("moe_topk_ids", "moe_topk_weights", "moe_probs", "moe_select_scores",
                 "moe_groups_kept")


@dataclass
class Step:
    """Everything recorded during one forward call.

    For row-indexed names (ROW_AXIS) the stored rows are the absolute positions `kept_rows`
    = [lo, hi), the part of this call's [start_pos, start_pos + n_tokens) the recorder keeps.
    """

    start_pos: int
    n_tokens: int
    data: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    kept_rows: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kept_rows is None:
            self.kept_rows = (self.start_pos, self.start_pos + self.n_tokens)

    def get(self, name: str, layer: int) -> np.ndarray | None:
        return self.data.get((name, layer))

    def layers(self, name: str) -> list[int]:
        return sorted(layer for (n, layer) in self.data if n == name)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A detached numpy copy (float32 for floating tensors): never a view of engine buffers."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return np.array(t.numpy(), copy=True)


class Recorder:
    """Collects named tensors per forward call; `names=None` records every name.

    rows=(a, b): keep only query positions [a, b) of the row-indexed names ("attn_probs",
    "resid"), sliced before copying. layers: record only these layer indices.
    max_steps: keep only the most recent steps.
    """

    # Read by Model.make_step: True makes recorded attention span every key 0..start_pos+T-1
    # (zeros outside a sliding window); False lets sliding layers keep cutting off old keys.
    full_key_span = True

    def __init__(self, names: Iterable[str] | None = None, max_steps: int | None = None, *,
                 rows: tuple[int, int] | None = None, layers: Iterable[int] | None = None):
        self.names = frozenset(names) if names is not None else None
        self.max_steps = max_steps
        if rows is not None and not (0 <= rows[0] <= rows[1]):
            raise ValueError(f"rows must be (a, b) with 0 <= a <= b, got {rows}")
        self.rows = None if rows is None else (int(rows[0]), int(rows[1]))
        self.layers = None if layers is None else frozenset(int(i) for i in layers)
        self.steps: list[Step] = []

    def wants(self, name: str) -> bool:
        if self.names is not None and name not in self.names:
            return False
        if name in ROW_AXIS and self.rows is not None and self.steps:
            lo, hi = self.steps[-1].kept_rows
            return hi > lo  # nothing of this call is kept: let the model take its fast path
        return True

    def begin_step(self, start_pos: int, n_tokens: int) -> None:
        """Called by the model at the start of each forward call."""
        kept = None
        if self.rows is not None:
            lo = max(start_pos, self.rows[0])
            kept = (lo, max(lo, min(start_pos + n_tokens, self.rows[1])))
        self.steps.append(Step(start_pos, n_tokens, kept_rows=kept))
        if self.max_steps is not None and len(self.steps) > self.max_steps:
            del self.steps[: len(self.steps) - self.max_steps]

    def record(self, name: str, layer: int, tensor: torch.Tensor) -> None:
        if not self.wants(name) or (self.layers is not None and layer not in self.layers):
            return
        if not self.steps:  # recording outside a model's forward (e.g. a unit test)
            axis = ROW_AXIS.get(name, 0)
            self.begin_step(0, tensor.shape[axis] if tensor.dim() >= 2 else 1)
        step = self.steps[-1]
        axis = ROW_AXIS.get(name)
        if axis is not None and self.rows is not None:
            lo, hi = step.kept_rows
            if hi <= lo:
                return
            # A view of the kept rows: only they are copied.
            tensor = tensor.narrow(axis, lo - step.start_pos, hi - lo)
        step.data[(name, layer)] = _to_numpy(tensor)

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def clear(self) -> None:
        self.steps.clear()


# ----------------------------------------------------------------------------- live trace

class _Series:
    """A growing array of rows indexed by token position (capacity doubles as it fills)."""

    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype):
        self.buf = np.zeros((64, *row_shape), dtype)
        self.n = 0  # rows [0, n) are valid

    def write(self, pos: int, rows: np.ndarray) -> None:
        end = pos + rows.shape[0]
        if end > self.buf.shape[0]:
            grown = np.zeros((max(end, 2 * self.buf.shape[0]), *self.buf.shape[1:]), self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[pos:end] = rows
        self.n = end


@dataclass(frozen=True)
class RoutingSnapshot:
    """Routing of positions [start, end), per MoE layer (detached copies)."""

    start: int
    end: int
    layers: tuple[int, ...]
    topk_ids: dict[int, np.ndarray]      # layer -> int32 [N, k], the model's ranking order
    topk_weights: dict[int, np.ndarray]  # layer -> float32 [N, k]
    router_probs: dict[int, np.ndarray]  # layer -> float32 [N, n_expert]
    # only for routers with a selection bias / group-limited routing (else empty)
    select_scores: dict[int, np.ndarray] = field(default_factory=dict)  # float32 [N, n_expert]
    groups_kept: dict[int, np.ndarray] = field(default_factory=dict)    # int32 [N, n_groups_used]


class _LiveRecorder(Recorder):
    """The Recorder a LiveTrace hands to the model; it writes straight into the LiveTrace."""

    full_key_span = False  # LiveTrace._attention pads the cut-off keys of its one row

    def __init__(self, live: "LiveTrace", names: Iterable[str]):
        super().__init__(names)
        self._live = live

    def begin_step(self, start_pos: int, n_tokens: int) -> None:
        self._live._begin(start_pos, n_tokens)

    def record(self, name: str, layer: int, tensor: torch.Tensor) -> None:
        if not self.wants(name):
            return
        if name == "attn_probs":
            # Only the step's last query row [H, S]: sliced before it is copied.
            self._live._attention(layer, _to_numpy(tensor[:, -1, :]))
        elif name == "attn_sink":
            self._live._sink(layer, _to_numpy(tensor[:, -1]))  # [H] of the last query
        elif name in ROUTING_NAMES:
            self._live._routing(name, layer, _to_numpy(tensor))


class LiveTrace:
    """What a running generation exposes to the UI: routing of every token, newest attention.

    The engine thread writes (pass `live.recorder` as `generate(..., trace=...)`); any thread
    reads through `snapshot_routing` / `newest_attention`, which return detached copies.
    Positions are absolute in the current sequence: a forward call at `start_pos` (a new
    generate() restarts at 0) drops everything recorded at or after it.

    Memory: routing costs, per token and MoE layer, k * 8 bytes (int32 ids + float32 weights)
    plus n_expert * 4 bytes (router probabilities): e.g. DeepSeek-V2-Lite (26 MoE layers,
    64 experts, k = 6) 7.9 KB per token; routers with a selection bias add n_expert * 4 bytes
    (select scores) and group-limited ones 4 per kept group. Attention keeps one step:
    one [H, S] float32 per attention layer.
    generate() never feeds its last sampled token back, so that token has no routing.
    """

    def __init__(self, n_layer: int, *, attention: bool = True, routing: bool = True,
                 attn_layers: Iterable[int] | None = None):
        """attn_layers: the layers that record attention (default all n_layer); a step's
        attention is complete when each of them has (LFM2's "conv" layers never record)."""
        names = ((["attn_probs", "attn_sink"] if attention else [])
                 + (list(ROUTING_NAMES) if routing else []))
        self.n_layer = n_layer
        self.attn_layers = frozenset(range(n_layer) if attn_layers is None else attn_layers)
        self.recorder: Recorder = _LiveRecorder(self, names)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, int], _Series] = {}
        self._step_end = 0  # end position of the step being recorded
        self._pending: dict[int, np.ndarray] = {}  # layer -> [H, S] of the step in progress
        self._newest: tuple[int, list[np.ndarray]] = (-1, [])
        self._sinks: dict[int, tuple[int, np.ndarray]] = {}  # layer -> (position, [H]), gpt-oss
        self._version = 0

    # -- engine thread --------------------------------------------------------------------

    def _begin(self, start_pos: int, n_tokens: int) -> None:
        with self._lock:
            for s in self._series.values():
                s.n = min(s.n, start_pos)
            self._step_end = start_pos + n_tokens
            self._pending = {}
            self._version += 1

    def _attention(self, layer: int, row: np.ndarray) -> None:
        # row [H, S]: S may start after key 0 (a sliding window): left-pad to the full span.
        pos = self._step_end - 1
        if row.shape[-1] < pos + 1:
            row = np.concatenate([np.zeros((row.shape[0], pos + 1 - row.shape[-1]), row.dtype),
                                  row], axis=-1)
        with self._lock:
            self._pending[layer] = row
            if self._pending.keys() >= self.attn_layers:  # every attention layer is in
                self._newest = (pos, [self._pending[i] for i in sorted(self._pending)])
                self._pending = {}
                self._version += 1

    def _sink(self, layer: int, share: np.ndarray) -> None:
        with self._lock:
            self._sinks[layer] = (self._step_end - 1, share)

    def _routing(self, name: str, layer: int, rows: np.ndarray) -> None:
        # rows [T, k] or [T, E] for positions [step_end - T, step_end)
        if name in ("moe_topk_ids", "moe_groups_kept"):
            rows = rows.astype(np.int32)
        with self._lock:
            s = self._series.get((name, layer))
            if s is None:
                s = self._series[(name, layer)] = _Series(rows.shape[1:], rows.dtype)
            s.write(self._step_end - rows.shape[0], rows)

    # -- any thread -----------------------------------------------------------------------

    def clear(self) -> None:
        """Forget everything recorded (e.g. when another conversation is shown)."""
        with self._lock:
            self._series.clear()
            self._pending = {}
            self._newest = (-1, [])
            self._sinks = {}
            self._version += 1

    @property
    def version(self) -> int:
        """Grows whenever something new was recorded: poll it to know when to redraw."""
        return self._version

    @property
    def moe_layers(self) -> list[int]:
        with self._lock:
            return sorted({layer for (name, layer) in self._series if name == "moe_topk_ids"})

    @property
    def n_tokens(self) -> int:
        """Positions [0, n_tokens) have routing in every MoE layer."""
        with self._lock:
            return self._n_tokens()

    def _n_tokens(self) -> int:
        return min((s.n for s in self._series.values()), default=0)

    def snapshot_routing(self, start: int = 0, end: int | None = None) -> RoutingSnapshot:
        """Routing of positions [start, end) (clipped to what is recorded), copied."""
        with self._lock:
            n = self._n_tokens()
            end = n if end is None else max(0, min(end, n))
            start = max(0, min(start, end))
            layers = sorted({layer for (name, layer) in self._series})
            out: dict[str, dict[int, np.ndarray]] = {k: {} for k in ROUTING_NAMES}
            for (name, layer), s in self._series.items():
                out[name][layer] = s.buf[start:end].copy()
        return RoutingSnapshot(start, end, tuple(layers), out["moe_topk_ids"],
                               out["moe_topk_weights"], out["moe_probs"],
                               out["moe_select_scores"], out["moe_groups_kept"])

    def newest_attention(self) -> tuple[int, list[np.ndarray]]:
        """(position, per attention layer in layer order [H, position + 1] float32) of the
        newest complete step's last query, or (-1, []) before any. Rows sum to 1 over visible
        keys, zeros elsewhere."""
        with self._lock:
            pos, rows = self._newest
        return pos, [r.copy() for r in rows]

    def newest_sink(self, position: int) -> np.ndarray | None:
        """float32 [n_attention_layers, H]: the share of `position`'s attention each head put
        on its sink (gpt-oss), in layer order; None when the model has no sinks or some layer
        has not recorded that position."""
        with self._lock:
            got = [self._sinks.get(layer) for layer in sorted(self.attn_layers)]
        if not got or any(g is None or g[0] != position for g in got):
            return None
        return np.stack([g[1] for g in got]).astype(np.float32)
