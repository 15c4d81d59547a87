"""Token sampling as a chain of small pure functions over a logits vector [V].

Each filter returns new logits with the excluded tokens set to -inf, so filters compose in
any order; `make_sampler` fixes llama.cpp's default order: repetition penalty, top-k, top-p,
min-p, temperature, then a draw. Temperature 0 means greedy (argmax after the penalty).
Draws use a seeded `torch.Generator`, so the same seed and settings give the same tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at (0: off, -1: all)
    seed: int | None = None  # None: a fresh random seed per generation

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repeat_penalty(logits: torch.Tensor, recent: Sequence[int], penalty: float) -> torch.Tensor:
    """llama.cpp's penalty on tokens seen recently: positive logits / p, negative logits * p."""
    if penalty == 1.0 or not recent:
        return logits
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long)
    vals = logits[ids]
    out = logits.clone()
    out[ids] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return out


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits (ties at the boundary are broken by index, as topk does)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    vals, idx = torch.topk(logits, k)  # [k], [k]
    out = torch.full_like(logits, NEG_INF)
    out[idx] = vals
    return out


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least p."""
    if p >= 1.0:
        return logits
    probs, idx = torch.sort(torch.softmax(logits, -1), descending=True)  # [V], [V]
    cum = torch.cumsum(probs, -1)
    # A token survives if the mass before it is still short of p (the first always survives).
    keep_sorted = (cum - probs) < p
    keep_sorted[0] = True
    keep = torch.zeros_like(keep_sorted)
    keep[idx] = keep_sorted
    return logits.masked_fill(~keep, NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    threshold = logits.max() + torch.log(torch.tensor(min_p, dtype=logits.dtype))
    return logits.masked_fill(logits < threshold, NEG_INF)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def categorical(logits: torch.Tensor, generator: torch.Generator) -> int:
    """One draw from softmax(logits)."""
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return gen


def make_sampler(params: SamplingParams) -> Callable[[torch.Tensor, Sequence[int], torch.Generator], int]:
    """sampler(logits [V], history ids, generator) -> token id, following `params`."""

    def penalize(logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        n = params.repeat_last_n
        recent = history if n < 0 else (history[-n:] if n > 0 else ())
        return apply_repeat_penalty(logits, recent, params.repeat_penalty)

    if params.greedy:
        def greedy(logits: torch.Tensor, history: Sequence[int], generator: torch.Generator) -> int:
            return int(torch.argmax(penalize(logits, history)))
        return greedy

    def sample(logits: torch.Tensor, history: Sequence[int], generator: torch.Generator) -> int:
        logits = penalize(logits.float(), history)
        ids = None
        if 0 < params.top_k < logits.shape[-1]:
            # Same result as apply_top_k, but the later filters then see k values, not V.
            logits, ids = torch.topk(logits, params.top_k)  # [k], [k]
        logits = apply_top_p(logits, params.top_p)
        logits = apply_min_p(logits, params.min_p)
        logits = apply_temperature(logits, params.temperature)
        choice = categorical(logits, generator)
        return choice if ids is None else int(ids[choice])

    return sample
