"""The inspection data behind the attention / routing / logit-lens panels and `llmlens trace`.

`inspect(model, ids)` runs ONE teacher-forced pass over `ids` (PROMPT_CHUNK-token passes into
a fresh cache, as generation's prefill does) with a `Recorder`, and returns plain numpy arrays
in a frozen `Inspection`. After each pass its recordings are moved into the result and
dropped, so memory is the result plus one pass's recordings.

Cost in bytes, T = tokens, R = query rows kept (`rows`, default all T), per recorded layer:
- attention: float32 [H, R, T] = 4 * H * R per token (T x T over all rows: quadratic; a
  Gemma 3 270M layer, 4 heads, 4096 tokens and R = 512 rows: 32 MiB). The result is refused
  above MAX_ATTN_BYTES: pass `rows` (or `layers`) to narrow it;
- routing (MoE layers): 4 * (2k + n_expert) per token (ids int32, weights and probs float32);
- logit lens: 8 * lens_k per kept row (ids int32 + logits float32); transiently the kept
  residual rows (4 * n_embd each) and LENS_BATCH rows of logits (4 * n_vocab each, 1 MiB a row
  at a 262k vocabulary) while their top-k is taken. Time, not memory, is its limit: one output
  head per row and layer (Gemma 3 270M: ~15 ms, so ~0.3 s a row over its 18 layers on 2 busy
  cores), hence `rows`.

`LiveTrace` (engine/trace.py) is the cheap per-token recorder for a running generation; the
logit lens is never computed per token, only here, on demand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.errors import LLMLensError
from engine.generate import PROMPT_CHUNK, trim_heap
from engine.trace import Recorder

KINDS = ("attention", "routing", "lens")
MAX_ATTN_BYTES = 4 << 30  # refuse attention results above 4 GiB (T x T x heads x layers grows fast)
# Residual rows per output-head call. It bounds the [rows, n_vocab] logits, and up to 16 rows a
# packed head runs its integer GEMV kernel (quant_linear.GEMV_MAX_T); 64 rows took the
# dequantize-then-GEMM path and were 10x slower per row on Gemma 3 270M's 262k-row head.
LENS_BATCH = 16


class InspectCancelled(LLMLensError):
    """inspect()'s should_stop() returned True."""


@dataclass(frozen=True)
class Inspection:
    """One teacher-forced pass's recordings; every array is a plain numpy array owned here.

    Attention and lens cover the query rows [rows[0], rows[1]) (R of them); routing covers
    every token. Dicts are keyed by transformer-layer index; only recorded layers appear
    (routing: MoE layers only).
    """

    ids: np.ndarray                       # int32 [T]
    rows: tuple[int, int]                 # query rows [a, b) of attn and lens
    attn: dict[int, np.ndarray]           # float32 [n_head, R, T]: row sums 1 over visible keys,
                                          # exact zeros elsewhere (future, outside a window)
    router_probs: dict[int, np.ndarray]   # float32 [T, n_expert] (softmax/sigmoid, before bias)
    topk_ids: dict[int, np.ndarray]       # int32 [T, k], the model's ranking order (best first)
    topk_weights: dict[int, np.ndarray]   # float32 [T, k], what multiplies each expert's output
    lens_ids: dict[int, np.ndarray]       # int32 [R, lens_k], best first
    lens_logits: dict[int, np.ndarray]    # float32 [R, lens_k]: model.head(residual after layer)
    # How the ranking was made, for routers that rank by something else than router_probs:
    # probs + selection bias (DeepSeek-V3 / GLM-4.5 / ERNIE), only layers with a bias
    select_scores: dict[int, np.ndarray] = field(default_factory=dict)  # float32 [T, n_expert]
    # group-limited routing: the expert groups the top-k was taken from, best first
    groups_kept: dict[int, np.ndarray] = field(default_factory=dict)    # int32 [T, n_groups_used]
    # attention sinks (gpt-oss): each head's share of attention on its sink, per kept row;
    # the attn rows sum to 1 minus it
    attn_sink: dict[int, np.ndarray] = field(default_factory=dict)      # float32 [n_head, R]

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


def _check_args(model, ids: list[int], what: Sequence[str], rows, lens_k: int
                ) -> tuple[int, int]:
    if not ids:
        raise LLMLensError("nothing to inspect: the token list is empty")
    bad = [i for i in ids if not 0 <= i < model.n_vocab]
    if bad:
        raise LLMLensError(f"token ids out of range [0, {model.n_vocab}): {bad[:10]}")
    unknown = [w for w in what if w not in KINDS]
    if unknown or not what:
        raise LLMLensError(f"unknown inspection kind(s) {unknown or list(what)}; "
                           f"choose from {', '.join(KINDS)}")
    T = len(ids)
    a, b = (0, T) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= a < b <= T:
        raise LLMLensError(f"rows {a}:{b} are not a non-empty range within the {T} tokens")
    if "lens" in what:
        if not 1 <= lens_k <= model.n_vocab:
            raise LLMLensError(f"lens_k must be in [1, {model.n_vocab}], got {lens_k}")
        if not callable(getattr(model, "head", None)):
            raise LLMLensError(f"{type(model).__name__} has no output head to apply to "
                               f"intermediate layers (model.head): no logit lens")
    return a, b


def _attn_bytes(model, n_rows: int, T: int, layers: Iterable[int] | None) -> int:
    c = model.config
    # only attention layers record: LFM2's short-convolution layers (kind "conv") have none
    kinds = getattr(model, "layer_kinds", None) or ["global"] * c.n_layer
    attn = {i for i, kind in enumerate(kinds) if kind != "conv"}
    n_layers = len(attn if layers is None else attn & set(layers))
    return 4 * c.n_head * n_rows * T * n_layers


def inspect(model, ids: Sequence[int], *, what: Sequence[str] = KINDS,
            rows: tuple[int, int] | None = None, lens_k: int = 10,
            layers: Iterable[int] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Inspection:
    """Attention, routing and logit lens for `ids`, from one teacher-forced pass.

    what: any of "attention", "routing", "lens". rows: query rows [a, b) that attention and
    lens keep (default all). layers: transformer-layer indices to record (default all).
    should_stop() is polled between passes and lens batches; True raises InspectCancelled.
    Raises LLMLensError on bad arguments (ids out of range, empty rows, too large a result).
    """
    ids = [int(i) for i in ids]
    what = tuple(what)
    a, b = _check_args(model, ids, what, rows, lens_k)
    T, R = len(ids), b - a
    layers = None if layers is None else sorted({int(i) for i in layers})
    if "attention" in what and _attn_bytes(model, R, T, layers) > MAX_ATTN_BYTES:
        raise LLMLensError(
            f"attention over {R} rows x {T} tokens would take "
            f"{_attn_bytes(model, R, T, layers) / 2**30:.1f} GiB; inspect fewer rows or layers")
    stop = should_stop or (lambda: False)

    names: list[str] = []
    if "attention" in what:
        names += ["attn_probs", "attn_sink"]  # the sink only where the model has one
    if "routing" in what:
        names += ["moe_probs", "moe_topk_ids", "moe_topk_weights", "moe_select_scores",
                  "moe_groups_kept"]
    if "lens" in what:
        names.append("resid")
    rec = Recorder(names, rows=(a, b), layers=layers)

    attn: dict[int, np.ndarray] = {}
    sinks: dict[int, list[np.ndarray]] = {}
    routing: dict[str, dict[int, list[np.ndarray]]] = {
        "moe_probs": {}, "moe_topk_ids": {}, "moe_topk_weights": {}, "moe_select_scores": {},
        "moe_groups_kept": {}}
    lens: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    cache = model.new_cache(T)
    for start in range(0, T, PROMPT_CHUNK):
        if stop():
            raise InspectCancelled("inspection cancelled")
        chunk = torch.tensor(ids[start:start + PROMPT_CHUNK], dtype=torch.long)
        model.forward(chunk, cache, start, rec, all_logits=False)
        step = rec.last
        lo, hi = step.kept_rows
        end = step.start_pos + step.n_tokens  # keys [0, end) exist after this pass
        for (name, layer), arr in step.data.items():
            if name == "attn_probs":
                # arr [H, hi - lo, S]: the last S keys of [0, end) (S < end if keys were cut)
                out = attn.get(layer)
                if out is None:
                    out = attn[layer] = np.zeros((arr.shape[0], R, T), np.float32)  # [H, R, T]
                out[:, lo - a:hi - a, end - arr.shape[-1]:end] = arr
            elif name == "attn_sink":
                sinks.setdefault(layer, []).append(arr)  # [H, hi - lo]
            elif name in routing:
                routing[name].setdefault(layer, []).append(arr)
        if "lens" in what:
            for layer in step.layers("resid"):
                got = lens.setdefault(layer, ([], []))
                for i, l in _lens_topk(model, step.get("resid", layer), lens_k, stop):
                    got[0].append(i)
                    got[1].append(l)
        rec.clear()
    del cache
    trim_heap()  # the passes' activations and the cache are garbage now

    def cat(parts: dict[int, list[np.ndarray]], dtype) -> dict[int, np.ndarray]:
        return {layer: np.concatenate(p).astype(dtype, copy=False)
                for layer, p in sorted(parts.items())}

    return Inspection(
        ids=np.asarray(ids, dtype=np.int32), rows=(a, b), attn=dict(sorted(attn.items())),
        router_probs=cat(routing["moe_probs"], np.float32),
        topk_ids=cat(routing["moe_topk_ids"], np.int32),
        topk_weights=cat(routing["moe_topk_weights"], np.float32),
        lens_ids=cat({layer: v[0] for layer, v in lens.items()}, np.int32),
        lens_logits=cat({layer: v[1] for layer, v in lens.items()}, np.float32),
        select_scores=cat(routing["moe_select_scores"], np.float32),
        groups_kept=cat(routing["moe_groups_kept"], np.int32),
        attn_sink={layer: np.concatenate(p, axis=-1).astype(np.float32, copy=False)
                   for layer, p in sorted(sinks.items())})


def _lens_topk(model, resid: np.ndarray, k: int, stop: Callable[[], bool]):
    """Yield (ids int32 [n, k], logits float32 [n, k]) of model.head over resid [R, n_embd],
    LENS_BATCH rows at a time (the full [R, n_vocab] logits are never held at once)."""
    with torch.inference_mode():
        x = torch.from_numpy(resid)  # [R, n_embd]
        for s in range(0, x.shape[0], LENS_BATCH):
            if stop():
                raise InspectCancelled("inspection cancelled")
            logits = model.head(x[s:s + LENS_BATCH])  # [n, n_vocab]
            top = torch.topk(logits.float(), k, dim=-1)  # [n, k] values, ids (best first)
            yield top.indices.numpy().astype(np.int32), top.values.numpy().copy()


def to_arrays(inspection: Inspection) -> dict[str, np.ndarray]:
    """`inspection` flattened into the named arrays of `llmlens trace`'s .npz (and of
    `llmlens serve`'s `POST /v1/lens/trace`), L = transformer-layer index:

    `ids` int32 [T]; `rows` int32 [2]; `attn.L` float32 [n_head, R, T]; `router_probs.L`
    float32 [T, n_expert]; `topk_ids.L` int32 [T, k]; `topk_weights.L` float32 [T, k];
    `lens_ids.L` int32 [R, lens_k]; `lens_logits.L` float32 [R, lens_k]; for routers with a
    selection bias `select_scores.L` float32 [T, n_expert] (the scores experts were ranked by),
    and for group-limited routing `groups_kept.L` int32 [T, n_groups_used]; for attention
    sinks (gpt-oss) `attn_sink.L` float32 [n_head, R].
    """
    arrays: dict[str, np.ndarray] = {"ids": inspection.ids,
                                     "rows": np.asarray(inspection.rows, np.int32)}
    for prefix, group in (("attn", inspection.attn), ("router_probs", inspection.router_probs),
                          ("topk_ids", inspection.topk_ids),
                          ("topk_weights", inspection.topk_weights),
                          ("lens_ids", inspection.lens_ids),
                          ("lens_logits", inspection.lens_logits),
                          ("select_scores", inspection.select_scores),
                          ("groups_kept", inspection.groups_kept),
                          ("attn_sink", inspection.attn_sink)):
        for layer, arr in group.items():
            arrays[f"{prefix}.{layer}"] = arr
    return arrays


def from_arrays(arrays: Mapping[str, np.ndarray]) -> Inspection:
    """The inverse of `to_arrays` (a .npz read back: `np.load(f)` is such a mapping)."""
    groups: dict[str, dict[int, np.ndarray]] = {p: {} for p in _ARRAY_GROUPS}
    for name in arrays:
        prefix, _, layer = name.partition(".")
        if prefix in groups and layer.isdigit():
            groups[prefix][int(layer)] = np.asarray(arrays[name])
    rows = np.asarray(arrays["rows"]).tolist()
    return Inspection(ids=np.asarray(arrays["ids"], np.int32), rows=(int(rows[0]), int(rows[1])),
                      attn=groups["attn"], router_probs=groups["router_probs"],
                      topk_ids=groups["topk_ids"], topk_weights=groups["topk_weights"],
                      lens_ids=groups["lens_ids"], lens_logits=groups["lens_logits"],
                      select_scores=groups["select_scores"], groups_kept=groups["groups_kept"],
                      attn_sink=groups["attn_sink"])


_ARRAY_GROUPS = ("attn", "router_probs", "topk_ids", "topk_weights", "lens_ids", "lens_logits",
                 "select_scores", "groups_kept", "attn_sink")
