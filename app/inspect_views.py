"""Engine inspection results -> the plain views the panels draw (ui/inspect/model.py). No Qt.

`inspection_views` runs on the engine worker's thread: it calls `engine.inspect.inspect` on the
loaded model for one selected token and converts the arrays. `routing_view` and
`live_attention_view` convert what a running generation's `LiveTrace` recorded; the GUI thread
calls them on its ~10 Hz timer with the model facts from `model_info` (plain dicts and lists).

Passes, for a query token q:
- attention (+ routing): rows [lo, hi) covering q and the matrix range; keys [0, hi) are
  enough for attention (causal), routing wants every token, so a pass with routing takes all ids;
- logit lens: its own pass over ids[:q + 1] keeping only row q, with every vocabulary entry, so
  the probabilities are a true softmax over the vocabulary and the next token's rank is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ui.inspect.model import AttentionView, LensView, RoutingView

MATRIX_ROWS = 48  # default attention matrix: this many tokens ending at the selected one
LENS_K = 10


@dataclass(frozen=True)
class InspectRequest:
    """What the GUI wants computed for the selected token (plain data, crosses threads)."""

    ids: tuple[int, ...]                # the conversation's tokens (the latest reply's context)
    query: int                          # the selected token's index in `ids`
    what: tuple[str, ...]               # any of "attention", "routing", "lens"
    matrix_range: tuple[int, int] | None = None  # [a, b) of the attention matrix; None: default
    matrix_layer: int = 0
    lens_k: int = LENS_K


@dataclass(frozen=True)
class InspectResult:
    request: InspectRequest
    attention: AttentionView | None = None
    routing: RoutingView | None = None
    lens: LensView | None = None


def default_range(query: int, rows: int = MATRIX_ROWS) -> tuple[int, int]:
    return max(0, query + 1 - rows), query + 1


def facts(model) -> dict[str, Any]:
    """The per-layer facts the views carry (the same keys `model_info` sends to the GUI)."""
    router = model.router_info
    if router is not None:
        # Group-limited routing (DeepSeek-V3, GLM-4.5): the panels hatch the dropped groups.
        n_groups = int(getattr(model.router, "n_groups", 0) or 0)
        router = {**router, "n_groups": n_groups if n_groups > 1 else 0}
    return {"layer_kinds": list(model.layer_kinds), "layer_windows": list(model.layer_windows),
            "kv_head_of": list(model.kv_head_of), "moe_layers": list(model.moe_layers),
            "router_info": router}


def attention_layers(info: dict[str, Any]) -> list[int]:
    """The layers that have attention (LFM2's short-convolution layers, kind "conv", have none)."""
    return [i for i, kind in enumerate(info.get("layer_kinds", [])) if kind != "conv"]


def _routing_facts(info: dict[str, Any], start: int = 0) -> dict[str, Any]:
    router = info.get("router_info") or {}
    n_groups = int(router.get("n_groups", 0) or 0)
    return dict(moe_layers=list(info.get("moe_layers", [])),
                n_expert=int(router.get("n_expert", 0)), n_used=int(router.get("n_used", 0)),
                n_shared=int(router.get("n_shared", 0)), gating=router.get("gating", "softmax"),
                start=start, n_groups=n_groups if n_groups > 1 else 0)


def _stack(per_layer: dict[int, np.ndarray], layers: list[int], dtype) -> np.ndarray | None:
    """{layer: [T, ...]} -> [T, L_moe, ...]; None unless every MoE layer recorded it."""
    if not per_layer or any(l not in per_layer for l in layers):
        return None
    return np.stack([per_layer[l] for l in layers], axis=1).astype(dtype)


def routing_view(info: dict[str, Any], topk_ids: dict[int, np.ndarray],
                 topk_weights: dict[int, np.ndarray], probs: dict[int, np.ndarray],
                 start: int = 0, select_scores: dict[int, np.ndarray] | None = None,
                 groups_kept: dict[int, np.ndarray] | None = None) -> RoutingView:
    """Stack per-layer routing ({layer: [T, k]} / {layer: [T, n_expert]}) into a RoutingView.
    select_scores / groups_kept: only routers with a selection bias / expert groups have them."""
    layers = list(info.get("moe_layers", []))  # empty: a dense model
    base = _routing_facts(info, start)
    if not layers or any(l not in topk_ids for l in layers):
        return RoutingView(**base)  # nothing recorded yet
    return RoutingView(**base,
                       probs=_stack(probs, layers, np.float32),               # [T, L_moe, E]
                       topk_ids=_stack(topk_ids, layers, np.int32),           # [T, L_moe, k]
                       topk_weights=_stack(topk_weights, layers, np.float32),  # [T, L_moe, k]
                       select_scores=_stack(select_scores or {}, layers, np.float32),  # [T, L, E]
                       groups_kept=_stack(groups_kept or {}, layers, np.int32))  # [T, L_moe, Gu]


class LiveRouting:
    """The routing of a streaming reply, grown from a LiveTrace a few rows per timer tick.

    Each read copies only the positions recorded since the last one into buffers of its own
    (capacity doubles), so a long reply never re-copies its whole routing ten times a second.
    The views handed out are prefixes of those buffers: later reads only write past them.
    """

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.n = 0
        self._bufs: dict[str, np.ndarray] = {}

    def update(self, trace) -> RoutingView | None:
        """A RoutingView of positions [0, n) when new positions were recorded, else None."""
        layers = list(self.info.get("moe_layers", []))
        snap = trace.snapshot_routing(self.n)
        if snap.end <= self.n or any(l not in snap.topk_ids for l in layers):
            return None
        parts = {"topk_ids": snap.topk_ids, "topk_weights": snap.topk_weights,
                 "probs": snap.router_probs}
        # recorded only for routers with a selection bias / expert groups
        for name, per_layer in (("select_scores", snap.select_scores),
                                ("groups_kept", snap.groups_kept)):
            if per_layer and all(l in per_layer for l in layers):
                parts[name] = per_layer
        for name, per_layer in parts.items():
            dtype = np.int32 if name in ("topk_ids", "groups_kept") else np.float32
            rows = np.stack([per_layer[l] for l in layers], axis=1).astype(dtype)  # [N, L, k|E]
            buf = self._bufs.get(name)
            if buf is None or buf.shape[0] < snap.end:
                grown = np.zeros((max(64, 2 * snap.end), *rows.shape[1:]), rows.dtype)
                if buf is not None:
                    grown[:self.n] = buf[:self.n]
                buf = self._bufs[name] = grown
            buf[snap.start:snap.end] = rows
        self.n = snap.end
        optional = {name: self._bufs[name][:self.n] for name in ("select_scores", "groups_kept")
                    if name in parts}
        return RoutingView(**_routing_facts(self.info), probs=self._bufs["probs"][:self.n],
                           topk_ids=self._bufs["topk_ids"][:self.n],
                           topk_weights=self._bufs["topk_weights"][:self.n], **optional)


def _per_model_layer(info: dict[str, Any], rows: dict[int, np.ndarray], n_keys: int
                     ) -> list[np.ndarray]:
    """One float32 [H, n_keys] row per model layer: zeros for layers without attention, so
    `rows[layer]` is always that layer's (the panels index rows by real layer number)."""
    n_head = next(iter(rows.values())).shape[0] if rows else len(info.get("kv_head_of", []))
    empty = np.zeros((n_head, n_keys), np.float32)
    return [rows[l].astype(np.float32, copy=False) if l in rows else empty
            for l in range(len(info["layer_kinds"]))]


def live_attention_view(info: dict[str, Any], position: int, rows: list[np.ndarray],
                        sink: np.ndarray | None = None) -> AttentionView:
    """The newest token's attention from a LiveTrace: `rows` has one [H, position + 1] per
    attention layer (in layer order); layers without attention get zeros. sink: [n_attention
    layers, H] from `LiveTrace.newest_sink` (gpt-oss), or None."""
    layers = attention_layers(info)
    by_layer = dict(zip(layers, rows))
    full_sink = None
    if sink is not None:
        full_sink = np.zeros((len(info["layer_kinds"]), sink.shape[1]), np.float32)  # [L, H]
        full_sink[layers] = sink
    return AttentionView(query=position, rows=_per_model_layer(info, by_layer, position + 1),
                         window=list(info["layer_windows"]), kv_head=list(info["kv_head_of"]),
                         layer_kind=list(info["layer_kinds"]), sink=full_sink)


def attention_view(info: dict[str, Any], ins, q: int, a: int, b: int, matrix_layer: int
                   ) -> AttentionView:
    """The AttentionView of query q from an Inspection over rows [a, b) (local or remote).

    rows are per model layer (zeros for a layer without attention); the matrix is of
    `matrix_layer` when it has attention, else of the first layer that has; `sink` [L, H]
    when the model has attention sinks (gpt-oss)."""
    layer = matrix_layer if matrix_layer in ins.attn else min(ins.attn, default=None)
    sinks = getattr(ins, "attn_sink", None) or {}  # {layer: [H, R]}, gpt-oss only
    sink = None
    if sinks:
        n_head = next(iter(sinks.values())).shape[0]
        sink = np.zeros((len(info["layer_kinds"]), n_head), np.float32)  # [L, H]
        for l, share in sinks.items():
            sink[l] = share[:, q - a]
    return AttentionView(
        query=q, rows=_per_model_layer(info, {l: ins.attn[l][:, q - a, :q + 1].copy()
                                              for l in ins.attn}, q + 1),
        window=list(info["layer_windows"]), kv_head=list(info["kv_head_of"]),
        layer_kind=list(info["layer_kinds"]), matrix_layer=0 if layer is None else layer,
        range_start=a, matrix=None if layer is None else ins.attn[layer][:, :, a:b].copy(),  # [H, R, R]
        sink=sink)


def inspection_views(model, tokenizer, request: InspectRequest,
                     should_stop: Callable[[], bool] | None = None) -> InspectResult:
    """Run the passes `request` asks for (worker thread) and convert their results."""
    from engine.inspect import inspect

    ids, q, what = list(request.ids), request.query, set(request.what)
    if not 0 <= q < len(ids):
        raise ValueError(f"token {q} is outside the {len(ids)} tokens")
    info = facts(model)
    attention = routing = lens = None
    if what & {"attention", "routing"}:
        a, b = request.matrix_range or default_range(q)
        a, b = max(0, min(a, q)), min(len(ids), max(b, q + 1))
        kinds = [k for k in ("attention", "routing") if k in what]
        # Attention is causal: keys past the last kept row change nothing, so stop there
        # unless routing (every token) is wanted too.
        span = ids if "routing" in what else ids[:b]
        ins = inspect(model, span, what=kinds, rows=(a, b), should_stop=should_stop)
        if "attention" in what:
            attention = attention_view(info, ins, q, a, b, request.matrix_layer)
        if "routing" in what:
            routing = routing_view(info, ins.topk_ids, ins.topk_weights, ins.router_probs,
                                   select_scores=ins.select_scores, groups_kept=ins.groups_kept)
    if "lens" in what:
        lens = lens_view(model, tokenizer, ids, q, request.lens_k, should_stop)
    return InspectResult(request, attention, routing, lens)


def lens_view(model, tokenizer, ids: Sequence[int], q: int, k: int,
              should_stop: Callable[[], bool] | None = None) -> LensView:
    """Logit lens at position q: each layer's top-k with probabilities over the whole vocabulary."""
    from engine.inspect import inspect

    ins = inspect(model, list(ids[:q + 1]), what=("lens",), rows=(q, q + 1),
                  lens_k=model.n_vocab, should_stop=should_stop)
    layers = sorted(ins.lens_ids)
    chosen = int(ids[q + 1]) if q + 1 < len(ids) else None
    top_ids, top_probs, ranks = [], [], []
    for layer in layers:
        order = ins.lens_ids[layer][0]            # [V] every id, best first
        logits = ins.lens_logits[layer][0].astype(np.float64)  # [V] sorted descending
        lse = logits[0] + np.log(np.exp(logits - logits[0]).sum())
        top_ids.append(order[:k])
        top_probs.append(np.exp(logits[:k] - lse))
        if chosen is not None:
            ranks.append(int(np.nonzero(order == chosen)[0][0]))
    ids_arr = np.asarray(top_ids, dtype=np.int32)  # [L, k]
    texts = [[_piece(tokenizer, int(i)) for i in row] for row in ids_arr]
    return LensView(position=q, ids=ids_arr, probs=np.asarray(top_probs, dtype=np.float32),
                    texts=texts, chosen_id=chosen, chosen_rank=ranks if chosen is not None else None)


def _piece(tokenizer, token_id: int) -> str:
    # Partial UTF-8 comes out as U+FFFD, which the panels show as the id.
    return tokenizer.token_bytes(token_id, special=True).decode("utf-8", errors="replace")
