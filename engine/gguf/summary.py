"""A model's vital statistics, read from a GGUF file's metadata and tensor directory alone.

Shared by `llmlens info`, the browser's summary panel and the chat status bar, so the three
always agree. Nothing here touches tensor data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.gguf.reader import GGUFFile

# Tensors that hold routed experts: three stacked FFN matrices per MoE layer.
_EXPERT_MARKERS = ("_exps.",)

# {arch}.expert_gating_func values (gguf.ExpertGatingFuncType; 3 is llama.cpp's softmax over
# the k selected logits) and, per arch, what llama.cpp assumes when a file leaves the key out
_GATING = {1: "softmax", 2: "sigmoid", 3: "softmax over the top-k", 4: "sqrt(softplus)"}
_GATING_DEFAULT = {"glm4moe": "sigmoid", "gpt-oss": "softmax over the top-k"}
# Architectures whose llama.cpp graph fixes whether the k weights are renormalised (the others
# read {arch}.expert_weights_norm, false when absent)
_NORM_FIXED = {"llama": True, "qwen3moe": True, "ernie4_5-moe": True, "qwen2moe": False,
               "olmoe": False}


@dataclass(frozen=True)
class QuantShare:
    type_name: str
    n_tensors: int
    n_bytes: int
    share: float  # of all tensor bytes


@dataclass(frozen=True)
class ModelSummary:
    path: str
    architecture: str
    name: str
    file_size: int
    n_tensors: int
    params_total: int
    params_per_expert: int | None
    params_active: int | None
    quant_mix: list[QuantShare] = field(default_factory=list)
    n_layers: int | None = None
    n_heads: Any = None
    n_kv_heads: Any = None
    head_dim_k: int | None = None
    head_dim_v: int | None = None
    n_embd: int | None = None
    n_ff: Any = None
    context_length: int | None = None
    rope: dict[str, Any] = field(default_factory=dict)
    experts_total: int | None = None
    experts_used: int | None = None
    experts_shared: int | None = None
    # MoE routing: gating, weights_norm, weights_scale, groups, groups_used, selection_bias
    routing: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    tokenizer: str | None = None
    has_chat_template: bool = False
    file_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (used by `llmlens info --json`)."""
        return asdict(self)

    def display_rows(self) -> list[tuple[str, str]]:
        """(label, text) rows for a human: what the browser and `llmlens info` show."""
        rows = [
            ("Architecture", self.architecture),
            ("Name", self.name or "—"),
            ("File size", human_bytes(self.file_size)),
            ("Parameters", human_count(self.params_total)),
        ]
        if self.params_per_expert is not None:
            rows.append(("Parameters per expert", human_count(self.params_per_expert)))
            rows.append(("Active parameters per token", human_count(self.params_active or 0)))
        rows.append(("Tensors", str(self.n_tensors)))
        if self.file_type:
            rows.append(("File type", self.file_type))
        rows.append(("Quantization mix", ", ".join(
            f"{q.type_name} {q.share:.0%} ({human_bytes(q.n_bytes)})" for q in self.quant_mix)))
        for label, value in (
            ("Layers", self.n_layers), ("Attention heads", self.n_heads),
            ("KV heads", self.n_kv_heads), ("Head dim (K / V)",
                                             _pair(self.head_dim_k, self.head_dim_v)),
            ("Embedding size", self.n_embd), ("Feed-forward size", self.n_ff),
            ("Context length", self.context_length),
        ):
            if value is not None:
                rows.append((label, str(value)))
        if self.rope:
            rows.append(("RoPE", ", ".join(f"{k}={v}" for k, v in self.rope.items())))
        if self.experts_total:
            rows.append(("Experts (total / used / shared)",
                         f"{self.experts_total} / {self.experts_used or '?'} / {self.experts_shared or 0}"))
            rows.extend(_routing_rows(self.routing))
        if self.vocab_size is not None:
            rows.append(("Vocabulary", str(self.vocab_size)))
        if self.tokenizer:
            rows.append(("Tokenizer", self.tokenizer))
        rows.append(("Chat template", "yes" if self.has_chat_template else "none"))
        return rows


def _routing_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """How the router picks and weighs experts: the rows under the expert counts."""
    if not r:
        return []
    weights = "renormalised to sum 1" if r.get("weights_norm") else "as scored"
    scale = r.get("weights_scale")
    if scale not in (None, 0, 0.0, 1, 1.0):
        weights += f", scaled x{scale:g}"
    rows = [("Expert gating", str(r.get("gating", "?"))), ("Expert weights", weights)]
    if (r.get("groups") or 0) > 1:
        rows.append(("Expert groups", f"{r['groups']}, best {r.get('groups_used') or '?'} used"))
    rows.append(("Selection bias", "yes (ranks experts, not their weights)"
                 if r.get("selection_bias") else "none"))
    return rows


def _routing(gf: GGUFFile, arch: str, get) -> dict[str, Any]:
    """Routing hyperparameters of an MoE file, with llama.cpp's per-arch defaults."""
    gating = get("expert_gating_func")
    norm = get("expert_weights_norm")
    return {
        "gating": _GATING.get(gating, f"type {gating}") if gating else
        _GATING_DEFAULT.get(arch, "softmax"),
        "weights_norm": bool(_NORM_FIXED.get(arch, norm or False)),
        "weights_scale": get("expert_weights_scale"),
        "groups": get("expert_group_count"),
        "groups_used": get("expert_group_used_count"),
        "selection_bias": any(t.name.endswith(".exp_probs_b.bias") for t in gf.tensors),
    }


def _pair(a: int | None, b: int | None) -> str | None:
    if a is None and b is None:
        return None
    return f"{a if a is not None else '?'} / {b if b is not None else '?'}"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix} ({n:,})"
    return str(n)


def _plain(value: Any) -> Any:
    """Per-layer arrays (e.g. head counts in some files) shown compactly."""
    if isinstance(value, np.ndarray):
        unique = sorted(set(value.tolist()))
        return unique[0] if len(unique) == 1 else f"per layer: {unique}"
    return value


# ggml's LLAMA_FTYPE values, as `general.file_type` stores them.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}


def summarize(gf: GGUFFile) -> ModelSummary:
    md = gf.metadata
    arch = gf.architecture or "unknown"

    def get(key: str) -> Any:
        return _plain(md.get(f"{arch}.{key}"))

    total = sum(t.n_elements for t in gf.tensors)
    experts_total = get("expert_count")
    experts_used = get("expert_used_count")
    per_expert = active = None
    if experts_total:
        expert_params = sum(t.n_elements for t in gf.tensors
                            if any(m in t.name for m in _EXPERT_MARKERS))
        per_expert = expert_params // experts_total
        active = total - expert_params + per_expert * int(experts_used or 0)

    by_type: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for t in gf.tensors:
        by_type[t.type_name] += t.n_bytes
        counts[t.type_name] += 1
    all_bytes = sum(by_type.values()) or 1
    mix = [QuantShare(name, counts[name], n, n / all_bytes) for name, n in by_type.most_common()]

    rope = {k: v for k, v in (
        ("freq_base", get("rope.freq_base")),
        ("dims", get("rope.dimension_count")),
        ("scaling", get("rope.scaling.type")),
        ("factor", get("rope.scaling.factor")),
        ("original_ctx", get("rope.scaling.original_context_length")),
    ) if v is not None}

    tokens = md.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens is not None else get("vocab_size")
    tok_model = md.get("tokenizer.ggml.model")
    tok_pre = md.get("tokenizer.ggml.pre")
    tokenizer = None
    if tok_model:
        tokenizer = str(tok_model) + (f" (pre: {tok_pre})" if tok_pre else "")

    n_heads = get("attention.head_count")
    head_k = get("attention.key_length")
    n_embd = get("embedding_length")
    if head_k is None and isinstance(n_heads, int) and n_heads and n_embd:
        head_k = n_embd // n_heads
    file_type = md.get("general.file_type")

    return ModelSummary(
        path=str(gf.path),
        architecture=arch,
        name=str(md.get("general.name", "")),
        file_size=gf.file_size,
        n_tensors=len(gf.tensors),
        params_total=total,
        params_per_expert=per_expert,
        params_active=active,
        quant_mix=mix,
        n_layers=get("block_count"),
        n_heads=n_heads,
        n_kv_heads=get("attention.head_count_kv"),
        head_dim_k=head_k,
        head_dim_v=get("attention.value_length") or head_k,
        n_embd=n_embd,
        n_ff=get("feed_forward_length"),
        context_length=get("context_length"),
        rope=rope,
        experts_total=experts_total,
        experts_used=experts_used,
        experts_shared=get("expert_shared_count"),
        routing=_routing(gf, arch, get) if experts_total else {},
        vocab_size=vocab,
        tokenizer=tokenizer,
        has_chat_template="tokenizer.chat_template" in md,
        file_type=_FILE_TYPES.get(file_type, str(file_type)) if file_type is not None else None,
    )
