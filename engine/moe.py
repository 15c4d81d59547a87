"""Mixture-of-experts building blocks shared by every MoE architecture.

- `route(...)`: the router. Turns router logits into `(indices, weights, probs)` the way
  llama.cpp's `build_moe_ffn` does (softmax or sigmoid scores, optional selection bias and
  group limiting, optional renormalisation and scale). `indices`/`weights` are exactly what
  the routing trace and the UI's routing panel show; `record_routing` hands them to a
  recorder, with the bias-corrected ranking scores ("moe_select_scores") and the kept expert
  groups ("moe_groups_kept") where the router has them, so a trace shows why an expert with
  a lower score was chosen.
- `StackedExperts`: one 3-D GGUF tensor `ffn_{gate,up,down}_exps` `[E, out, in]`, kept in its
  file encoding (a zero-copy view over the memory map). One expert's matrix is a contiguous
  byte range, so a 16B MoE at Q4_K_M never has more than a few expert matrices decoded at
  once; quantized experts go through `QuantLinear` (fused kernels over the packed bytes) when
  the performance engine provides it, and without the kernels through an `Int4Linear`
  (engine/packed_fallback.py) built the first time the expert is routed to.
- `MoEFeedForward`: router + routed SwiGLU experts (+ optional shared expert, optionally gated),
  with prefill grouped by expert so each selected expert runs once over all its tokens.
  `load_moe_ffn(model, layer, router)` assembles one from a layer's tensors, for every
  MoE architecture.
- `routing_trace_json(...)`: the `--trace-routing FILE.json` document.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType

from engine.gguf.dequant import dequantize_raw
from engine.linear import exact_mode

GATING_SOFTMAX = 1  # gguf.ExpertGatingFuncType values ({arch}.expert_gating_func)
GATING_SIGMOID = 2

_FLOAT_DTYPES = {
    int(GGMLQuantizationType.F32): torch.float32,
    int(GGMLQuantizationType.F16): torch.float16,
    int(GGMLQuantizationType.BF16): torch.bfloat16,
}


# ----------------------------------------------------------------------------- router

@dataclass(frozen=True)
class RouterConfig:
    n_expert: int
    n_used: int                       # k
    gating: int = GATING_SOFTMAX      # GATING_SOFTMAX | GATING_SIGMOID
    norm_weights: bool = False        # renormalise the k selected weights to sum 1
    scale: float = 1.0                # expert_weights_scale (0 means 1)
    n_groups: int = 0                 # expert_group_count (DeepSeek group-limited routing)
    n_groups_used: int = 0            # expert_group_used_count

    @property
    def gating_name(self) -> str:
        return "sigmoid" if self.gating == GATING_SIGMOID else "softmax"


def route(logits: torch.Tensor, cfg: RouterConfig, bias: torch.Tensor | None = None,
          detail: dict[str, torch.Tensor] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick k experts per token.

    logits: [T, E] router logits. bias: [E] selection bias (DeepSeek-V3 `exp_probs_b`): it only
    changes which experts win, never their weights. Returns indices [T, k] (int64, best first),
    weights [T, k] (f32, what multiplies each expert's output) and probs [T, E] (the full
    softmax/sigmoid score vector, before bias).

    detail: a dict to fill with how the ranking was made (tensors computed anyway, so this
    costs nothing): "select" [T, E], probs + bias, the scores experts are ranked by (before
    the group mask), when there is a bias; "groups_kept" [T, n_groups_used] int64, the groups
    the experts were picked from (best group first), when routing is group-limited.
    """
    logits = logits.float()
    if cfg.gating == GATING_SIGMOID:
        probs = torch.sigmoid(logits)                       # [T, E]
    else:
        probs = torch.softmax(logits, dim=-1)               # [T, E]
    select = probs if bias is None else probs + bias.float()  # [T, E]
    if detail is not None and bias is not None:
        detail["select"] = select
    if cfg.n_groups > 1:
        # llama.cpp: a group scores the sum of its two best experts; keep the best groups.
        T = select.shape[0]
        groups = select.view(T, cfg.n_groups, -1)           # [T, G, E/G]
        group_scores = groups.topk(2, dim=-1).values.sum(-1)  # [T, G]
        keep = group_scores.topk(cfg.n_groups_used, dim=-1).indices  # [T, Gu]
        if detail is not None:
            detail["groups_kept"] = keep
        mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        select = groups.masked_fill(mask[..., None], float("-inf")).view(T, -1)
    indices = select.topk(cfg.n_used, dim=-1).indices       # [T, k], best first
    weights = probs.gather(1, indices)                      # [T, k]
    if cfg.norm_weights:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(6.103515625e-5)
    if cfg.scale not in (0.0, 1.0):
        weights = weights * cfg.scale
    return indices, weights, probs


def record_routing(recorder: Any, layer: int, indices: torch.Tensor, weights: torch.Tensor,
                   probs: torch.Tensor, detail: dict[str, torch.Tensor] | None = None) -> None:
    """Hand one MoE layer's routing to a recorder: "moe_topk_ids" [T, k], "moe_topk_weights"
    [T, k], "moe_probs" [T, E] always; from `route`'s detail, "moe_select_scores" [T, E] (the
    bias-corrected ranking scores, only for routers with a selection bias) and
    "moe_groups_kept" int32 [T, n_groups_used] (only for group-limited routing)."""
    recorder.record("moe_topk_ids", layer, indices)
    recorder.record("moe_topk_weights", layer, weights)
    recorder.record("moe_probs", layer, probs)
    if detail:
        if "select" in detail:
            recorder.record("moe_select_scores", layer, detail["select"])
        if "groups_kept" in detail:
            recorder.record("moe_groups_kept", layer, detail["groups_kept"].to(torch.int32))


# ----------------------------------------------------------------------------- expert weights

def _quant_linear_class() -> Any:
    """The performance engine's packed-weight linear; None if that module is unavailable or
    exact weights are asked for (its decode kernel rounds activations to 8 bits)."""
    if exact_mode():
        return None
    try:
        from engine.quant_linear import QuantLinear  # noqa: PLC0415
    except ImportError:
        return None
    return QuantLinear


# Without the kernels, int4 experts of one stacked tensor hold at most this times its file
# bytes (the bound for a 16B MoE on a 24 GB machine); see StackedExperts.
INT4_EXPERT_BUDGET = 1.2


def _int4_fallback(ggml_type: int) -> bool:
    """Whether experts of this type go through `engine.packed_fallback` (no fused kernels)."""
    from engine import kernels  # noqa: PLC0415
    from engine.packed_fallback import int4_supported  # noqa: PLC0415

    return not kernels.available() and int4_supported(ggml_type)


def _torch_view(arr: np.ndarray) -> torch.Tensor:
    """A torch view over a (read-only) memory-mapped array: no copy, nothing written through it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(arr)


class StackedExperts:
    """A stacked expert tensor `[E, out, in]` kept in its GGUF encoding.

    `matmul(e, x)` computes `x @ W_e.T` for one expert, x `[n, in]` -> `[n, out]`, touching only
    that expert's bytes. The tensor is a zero-copy view over the file's memory map: pages of
    experts nobody routes to are never read. Float experts (F32/F16/BF16) are multiplied from
    that view (f16/bf16 upcast one expert at a time); quantized ones through a `QuantLinear`
    per expert over its packed rows (fused kernels for decode, chunked dequantize + GEMM for
    prefill), or, without it or in exact mode (`engine.linear.exact_weights`), by decoding
    that one expert per call (exact float32 products). Without the fused kernels, an expert
    of a type `engine.packed_fallback` holds becomes an `Int4Linear` the first time it is
    routed to (PyTorch's int4 matmul), while the int4 experts of this tensor stay within
    INT4_EXPERT_BUDGET times its file bytes: all of them for Q4_0/Q4_K/Q8_0 (1.06-1.11x),
    the first ~75% routed to for Q5_*/Q6_K (1.5-1.6x) and ~55% for MXFP4 (2.1x); the others
    stay on QuantLinear's exact path. File pages read are dropped through
    `release(start, n_bytes)` (byte offsets in this tensor) when given.
    """

    def __init__(self, raw: np.ndarray, ggml_type: int, shape: Sequence[int], name: str = "",
                 release: Callable[[int, int], None] | None = None):
        if len(shape) != 3:
            raise ValueError(f"{name}: expected a 3-D expert tensor, got shape {tuple(shape)}")
        self.name = name
        self.ggml_type = int(ggml_type)
        self.n_expert, self.n_out, self.n_in = (int(s) for s in shape)
        raw = raw.reshape(-1)
        if raw.nbytes % (self.n_expert * self.n_out):
            raise ValueError(f"{name}: {raw.nbytes} bytes do not split into "
                             f"{self.n_expert} x {self.n_out} rows")
        self.expert_bytes = raw.nbytes // self.n_expert
        self._raw = raw
        self._dense: torch.Tensor | None = None     # [E, out, in] float view
        self._packed: torch.Tensor | None = None    # [E, out, row_bytes] uint8 view
        self._linears: dict[int, Any] = {}
        self._qlin_cls = None
        self._int4 = False          # no kernels: experts as Int4Linear (engine.packed_fallback)
        self._int4_held = 0         # bytes of the Int4Linear experts built
        self._over_budget: set[int] = set()  # experts left on QuantLinear's exact path
        self._release = release
        self._kernel: Any = False  # the kernel module for grouped calls, None if unusable; False: not looked up yet
        if self.ggml_type in _FLOAT_DTYPES:
            dtype = _FLOAT_DTYPES[self.ggml_type]
            np_dtype = np.float32 if dtype == torch.float32 else np.int16
            t = _torch_view(raw.view(np_dtype))
            self._dense = (t if dtype == torch.float32 else t.view(dtype)).view(
                self.n_expert, self.n_out, self.n_in)
        else:
            self._packed = _torch_view(raw).view(self.n_expert, self.n_out, -1)
            self._qlin_cls = _quant_linear_class()
            self._int4 = self._qlin_cls is not None and _int4_fallback(self.ggml_type)

    def expert_raw(self, e: int) -> np.ndarray:
        """Bytes of expert e's `[out, in]` matrix (a view)."""
        return self._raw[e * self.expert_bytes:(e + 1) * self.expert_bytes]

    def weight(self, e: int) -> torch.Tensor:
        """Expert e's matrix as float32 `[out, in]` (decodes only that expert)."""
        if self._dense is not None:
            return self._dense[e].float()
        return dequantize_raw(self.expert_raw(e), self.ggml_type, (self.n_out, self.n_in))

    def linear(self, e: int) -> Any:
        """Expert e as a QuantLinear over its packed rows (shares the bytes), or without the
        kernels an Int4Linear re-laid from them; built on first use."""
        lin = self._linears.get(e)
        if lin is None:
            name = f"{self.name}[{e}]"
            lin = self._int4_linear(e, name) if self._int4 else None
            if lin is None:
                if self._int4:
                    self._over_budget.add(e)
                lin = self._qlin_cls(self._packed[e], self.ggml_type, self.n_in, name=name)
            self._linears[e] = lin
        return lin

    def _int4_linear(self, e: int, name: str) -> Any:
        """Expert e as an Int4Linear, or None once the int4 experts would pass the budget."""
        from engine.packed_fallback import int4_bytes, make_fallback_linear  # noqa: PLC0415

        need = int4_bytes(self.ggml_type, self.n_out, self.n_in)
        if self._int4_held + need > INT4_EXPERT_BUDGET * self._raw.nbytes:
            return None
        base, rel = e * self.expert_bytes, self._release
        lin = make_fallback_linear(self._packed[e].numpy(), self.ggml_type, self.n_in, name=name,
                                   release=None if rel is None else lambda a, n: rel(base + a, n))
        self._int4_held += lin.nbytes
        return lin

    def matmul(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # x: [n, in] -> [n, out]
        if self._dense is not None:
            w = self._dense[e]
            return x @ (w if w.dtype == torch.float32 else w.float()).T
        if self._qlin_cls is not None:
            y = self.linear(e)(x)
            if e in self._over_budget and self._release is not None:
                # read through the map on every call: hand the pages back (and the folios
                # around them, see engine.packed_fallback), or they add up in RSS
                from engine.packed_fallback import FAULT_AROUND  # noqa: PLC0415

                self._release(e * self.expert_bytes - FAULT_AROUND,
                              self.expert_bytes + 2 * FAULT_AROUND)
            return y
        return x @ self.weight(e).T

    def grouped_kernel(self) -> Any:
        """The kernel module when `matmul_grouped` can run (quantized experts, kernels loaded,
        not exact mode), else None."""
        if self._qlin_cls is None:
            return None
        if self._kernel is False:
            from engine import kernels  # noqa: PLC0415

            k = kernels.load()
            self._kernel = k if k is not None and self.ggml_type in k.supported_types() else None
        return self._kernel

    def matmul_grouped(self, experts: torch.Tensor, counts: torch.Tensor, x: torch.Tensor
                       ) -> torch.Tensor:
        """Tokens grouped by expert in one fused-kernel call: rows of x [N, in] in consecutive
        segments of `counts` [S] rows, segment s through expert `experts` [S] -> [N, out].
        Only where `grouped_kernel()` is not None."""
        return self.grouped_kernel().moe_gemm(self._packed, self.ggml_type, experts, counts,
                                              x.to(torch.float32), torch.get_num_threads())

    @property
    def nbytes(self) -> int:
        return self._raw.nbytes


# ----------------------------------------------------------------------------- MoE FFN

class MoEFeedForward:
    """Router + routed SwiGLU experts + optional shared expert.

    gate_inp: Linear-like router `[T, D] -> [T, E]`; gate/up/down: StackedExperts;
    shared: callable `[T, D] -> [T, D]` (a dense SwiGLU) or None; shared_gate: Linear-like
    `[T, D] -> [T, 1]` whose sigmoid scales the shared expert (Qwen2-MoE) or None.
    """


    def __init__(self, cfg: RouterConfig, gate_inp: Any, gate: StackedExperts, up: StackedExperts,
                 down: StackedExperts, probs_bias: torch.Tensor | None = None,
                 shared: Any = None, shared_gate: Any = None):
        self.cfg, self.gate_inp = cfg, gate_inp
        self.gate, self.up, self.down = gate, up, down
        self.probs_bias = probs_bias
        self.shared, self.shared_gate = shared, shared_gate

    def __call__(self, x: torch.Tensor, layer: int = -1, recorder: Any = None) -> torch.Tensor:
        # x: [T, D]
        logits = self.gate_inp(x)                                   # [T, E]
        detail = {} if recorder is not None else None
        idx, w, probs = route(logits, self.cfg, self.probs_bias, detail)  # [T, k], [T, k], [T, E]
        if recorder is not None:
            record_routing(recorder, layer, idx, w, probs, detail)
        out = self.experts(x, idx, w)                               # [T, D]
        if self.shared is not None:
            sh = self.shared(x)                                     # [T, D]
            if self.shared_gate is not None:
                sh = sh * torch.sigmoid(self.shared_gate(x))        # [T, 1] broadcast
            out = out + sh
        return out

    def experts(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Run each selected expert once over the tokens routed to it; sum weighted outputs."""
        T, k = idx.shape
        out = torch.zeros_like(x)                                   # [T, D]
        grouped = self._grouped()
        if T == 1:  # decode: k experts, one token each
            if grouped:
                d = self._experts_grouped(x.expand(k, -1), idx[0], torch.ones(k, dtype=torch.long))
                return (w[0, :, None].to(d.dtype) * d).sum(0, keepdim=True)  # [1, D]
            for j in range(k):
                e = int(idx[0, j])
                out += w[0, j] * self._expert(e, x)
            return out
        flat = idx.reshape(-1)                                      # [T*k]
        order = torch.argsort(flat, stable=True)                    # group slots by expert
        experts, counts = torch.unique_consecutive(flat[order], return_counts=True)
        tok = order // k                                            # [T*k] token of each slot
        wsorted = w.reshape(-1)[order]                              # [T*k]
        if grouped:
            # experts with few tokens: one grouped kernel call; the others (many tokens, where
            # dequantize + GEMM is faster) one by one
            few = counts <= self._grouped_max_tokens()             # [S]
            slot_few = torch.repeat_interleave(few, counts)         # [T*k]
            if bool(few.any()):
                t = tok[slot_few]
                y = self._experts_grouped(x[t], experts[few], counts[few])  # [n_few, D]
                out.index_add_(0, t, y * wsorted[slot_few, None])
            starts = torch.cumsum(counts, 0) - counts
            for e, n, start in zip(experts[~few].tolist(), counts[~few].tolist(),
                                   starts[~few].tolist()):
                t = tok[start:start + n]                            # [n]
                out.index_add_(0, t, self._expert(e, x[t]) * wsorted[start:start + n, None])
            return out
        start = 0
        for e, n in zip(experts.tolist(), counts.tolist()):
            t = tok[start:start + n]                                # [n]
            y = self._expert(e, x[t]) * wsorted[start:start + n, None]  # [n, D]
            out.index_add_(0, t, y)
            start += n
        return out

    def _grouped_max_tokens(self) -> int:
        """An expert with at most this many tokens of a prompt pass joins the grouped kernel
        call; above it dequantize + GEMM is faster (QuantLinear's crossover for the type)."""
        from engine import kernels  # noqa: PLC0415
        from engine.gguf.reader import ggml_type_name  # noqa: PLC0415
        from engine.quant_linear import kernel_max_t  # noqa: PLC0415

        return kernel_max_t(ggml_type_name(self.gate.ggml_type), kernels.isa())

    def _grouped(self) -> bool:
        # Only for the plain SwiGLU expert: a family that overrides `_expert` (gpt-oss: biases,
        # clamped gate) keeps its own per-expert path.
        return (type(self)._expert is MoEFeedForward._expert
                and all(p.grouped_kernel() is not None for p in (self.gate, self.up, self.down)))

    def _experts_grouped(self, x: torch.Tensor, experts: torch.Tensor, counts: torch.Tensor
                         ) -> torch.Tensor:
        """SwiGLU experts over tokens grouped by expert, three kernel calls in all (gate, up,
        down) instead of three per expert: x [N, D] in segments of counts [S] -> [N, D]."""
        g = self.gate.matmul_grouped(experts, counts, x)            # [N, F]
        u = self.up.matmul_grouped(experts, counts, x)              # [N, F]
        return self.down.matmul_grouped(experts, counts, F.silu(g) * u)  # [N, D]

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # x: [n, D] -> [n, D]
        h = F.silu(self.gate.matmul(e, x)) * self.up.matmul(e, x)  # [n, F]
        return self.down.matmul(e, h)


def load_experts(m: Any, name: str) -> StackedExperts:
    """A stacked `[E, out, in]` expert tensor of model m's file (zero-copy over the map)."""
    from engine.linear import release_pages  # noqa: PLC0415

    info = m.tensor_info(name)
    return StackedExperts(m.gguf.raw(info), info.ggml_type, info.shape, name,
                          release=lambda a, n: release_pages(m.gguf, info, a, n))


def load_moe_ffn(m: Any, layer: int, router: RouterConfig, shared_gated: bool = False
                 ) -> MoEFeedForward | None:
    """`blk.{layer}`'s routed-expert FFN for model m (an `engine.models.base.Model`), or None
    when the layer has no router (a dense layer, e.g. DeepSeek's leading ones).

    Stacked experts stay in their GGUF encoding. The shared experts (`ffn_*_shexp`, one gated
    MLP however many experts it merges), when the file has them, always run; scaled by
    sigmoid(x . ffn_gate_inp_shexp) if `shared_gated` (Qwen2-MoE). `exp_probs_b.bias`, when
    present, is the selection bias of sigmoid routers (DeepSeek-V3 style).
    """
    p = f"blk.{layer}."
    if not m.gguf.has_tensor(p + "ffn_gate_inp.weight"):
        return None
    shared = shared_gate = None
    if m.gguf.has_tensor(p + "ffn_gate_shexp.weight"):
        shared = m.load_gated_mlp(layer, "_shexp")
        if shared_gated:
            g = m.load_vector(p + "ffn_gate_inp_shexp.weight").reshape(-1, 1)  # [D, 1]
            shared_gate = lambda x: x @ g  # noqa: E731  [T, D] -> [T, 1]
    return MoEFeedForward(
        router,
        gate_inp=m.load_linear(p + "ffn_gate_inp"),                           # [E, D]
        gate=load_experts(m, p + "ffn_gate_exps.weight"),                    # [E, F, D]
        up=load_experts(m, p + "ffn_up_exps.weight"),                        # [E, F, D]
        down=load_experts(m, p + "ffn_down_exps.weight"),                    # [E, D, F]
        probs_bias=m.load_vector(p + "exp_probs_b.bias", required=False),    # [E] or None
        shared=shared, shared_gate=shared_gate,
    )


# ----------------------------------------------------------------------------- routing trace

def routing_trace_json(moe_layers: Sequence[int], token_ids: Sequence[int],
                       token_texts: Sequence[str], topk_ids: Sequence[Any],
                       topk_weights: Sequence[Any]) -> dict[str, Any]:
    """The `llmlens generate ... --trace-routing FILE.json` document.

    moe_layers: transformer-layer index of each MoE layer (L entries). token_ids/token_texts:
    every token, prompt then generated (N entries). topk_ids/topk_weights: one array per MoE
    layer, `[N, k]`, rows in token order (concatenate the recorder's snapshots of each forward
    call along the token axis). Returns
    `{"layers": [...], "tokens": [{"id", "text", "experts": [[ids] per layer], "weights": [...]}]}`.
    """
    ids = [np.asarray(a).reshape(len(token_ids), -1) for a in topk_ids]
    wts = [np.asarray(a, dtype=np.float64).reshape(len(token_ids), -1) for a in topk_weights]
    if len(ids) != len(moe_layers) or len(wts) != len(moe_layers):
        raise ValueError(f"{len(moe_layers)} MoE layers but {len(ids)} id / {len(wts)} weight arrays")
    tokens = []
    for i, (tid, text) in enumerate(zip(token_ids, token_texts)):
        tokens.append({
            "id": int(tid),
            "text": text,
            "experts": [[int(v) for v in a[i]] for a in ids],
            "weights": [[round(float(v), 6) for v in a[i]] for a in wts],
        })
    return {"layers": [int(layer) for layer in moe_layers], "tokens": tokens}


def collect_routing(recorder: Any, moe_layers: Sequence[int]
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per MoE layer, the `[N, k]` expert ids and weights of every token a `Recorder` saw,
    its forward calls (`recorder.steps`, prompt then each decode step) concatenated in order:
    the `topk_ids`/`topk_weights` arguments of `routing_trace_json`."""
    ids: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    for layer in moe_layers:
        i = [s.get("moe_topk_ids", layer) for s in recorder.steps]
        w = [s.get("moe_topk_weights", layer) for s in recorder.steps]
        if any(a is None for a in i + w):
            raise ValueError(f"the recorder has no routing for MoE layer {layer} in some step "
                             f"(record 'moe_topk_ids' and 'moe_topk_weights' from the start)")
        ids.append(np.concatenate(i) if i else np.zeros((0, 0), np.int64))
        wts.append(np.concatenate(w) if w else np.zeros((0, 0), np.float32))
    return ids, wts
