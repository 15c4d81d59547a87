"""Plain data the inspection panels display (no engine, no torch: `app/` builds these).

The panels never compute model quantities: they draw what `app/` hands them, which comes from
the engine's trace (`engine/inspect.py`). Token indices are positions in the conversation's
token sequence (prompt and replies, 0-based), the same index the chat, the token strip and
every panel use for "the selected token".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TokenView:
    """One token of the conversation as the strip and the panels show it."""

    index: int                      # position in the conversation's token sequence
    id: int
    text: str                       # decoded piece (may be "" or partial UTF-8 -> shown as an id)
    role: Literal["system", "user", "assistant", "template", "prompt"]
    generated: bool = False         # sampled by the model (has prob/top/sampling)
    message: int | None = None      # index of the chat message the token belongs to
    prob: float | None = None       # p(token | prefix) under the model (generated or teacher-forced)
    top: tuple[tuple[int, str, float], ...] = ()  # alternatives (id, text, prob), best first


@dataclass(frozen=True)
class AttentionView:
    """Attention of one query token, for every layer and head, plus one layer's full block.

    rows[l] is float32 [n_head, n_keys], one per model layer: the selected token's attention
    over keys 0..query (zeros where a sliding window hides a key; all zeros for a "conv" layer,
    which has no attention). `matrix` is float32 [n_head, R, R] for layer `matrix_layer` (never
    a "conv" layer) over conversation positions [range_start, range_start + R) (queries = keys;
    exact zeros above the diagonal and outside windows). `sink`, float32 [n_layer, n_head] when
    the model has attention sinks (gpt-oss): the share of the selected token's attention that
    went to the sink, so rows[l][h] sums to 1 - sink[l, h]."""

    query: int
    rows: list[np.ndarray]
    window: list[int | None]        # per layer: sliding window size, None = global
    kv_head: list[int]              # per query head: the key/value head it reads (GQA)
    layer_kind: list[str]           # per layer: "global", "sliding", "mla", "conv" (no attention)
    matrix_layer: int = 0
    range_start: int = 0
    matrix: np.ndarray | None = None
    sink: np.ndarray | None = None


@dataclass(frozen=True)
class RoutingView:
    """MoE routing of a span of tokens (empty `moe_layers` for a dense model).

    probs float32 [T, L_moe, n_expert] (router softmax, or sigmoid scores for sigmoid gates),
    topk_ids int32 [T, L_moe, k] best first, topk_weights float32 [T, L_moe, k] (applied to the
    expert outputs). Token t of these arrays is conversation position `start + t`.

    Routers that rank by something else than `probs` (DeepSeek-V3, GLM-4.5, ERNIE 4.5, LFM2)
    also give select_scores float32 [T, L_moe, n_expert] (probs + the selection bias, what
    the top-k was taken over) and, with group-limited routing, groups_kept int32
    [T, L_moe, n_groups_used]: the groups of n_expert / n_groups consecutive experts the top-k
    was picked from (the other groups' experts could not be chosen)."""

    moe_layers: list[int]
    n_expert: int
    n_used: int
    n_shared: int
    gating: Literal["softmax", "sigmoid"] = "softmax"
    start: int = 0
    probs: np.ndarray | None = None
    topk_ids: np.ndarray | None = None
    topk_weights: np.ndarray | None = None
    select_scores: np.ndarray | None = None
    groups_kept: np.ndarray | None = None
    n_groups: int = 0               # expert groups (0: routing is not group-limited)


@dataclass(frozen=True)
class LensView:
    """Logit lens at one position: the top candidates decoded from each layer's residual stream.

    ids int32 [L, k], probs float32 [L, k], texts [L][k]; chosen_rank[l] = rank (0-based) of the
    token that actually came next at that layer's distribution (None at the last position)."""

    position: int
    ids: np.ndarray
    probs: np.ndarray
    texts: list[list[str]]
    chosen_id: int | None = None
    chosen_rank: list[int] | None = None


@dataclass(frozen=True)
class ThroughputSample:
    """One generated token's timing, pushed to the throughput panel (plain floats only)."""

    index: int                      # 0-based index among the reply's tokens
    seconds: float                  # time to produce it


@dataclass(frozen=True)
class ReplyTimings:
    """One finished reply, like llama.cpp's timings line (kept per message for the history)."""

    prompt_tokens: int
    prompt_tok_s: float
    ttft_s: float | None
    gen_tokens: int
    gen_tok_s: float
    per_token_s: tuple[float, ...] = ()
    cache_bytes_per_token: int = 0
    cache_bytes: int = 0
    rss_bytes: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    prompt_reused: int = 0  # prompt tokens kept in the cache from earlier turns, not processed
