"""What every model shares: the hyperparameter key table, the `Model` base class with the one
forward pass, the per-call `ForwardStep`, the arch registry, `load_model` and `estimate_memory`.

Hyperparameters come from GGUF metadata through a table of keys (field -> key(s), default)
into a frozen dataclass per architecture; derived defaults are filled in `__post_init__`.
Each architecture lives in `engine/models/<arch>.py` and registers its class with `@register`.

One interface, mlx-lm style: every block is called as `block(x, cache, step)`, where `step` is
a frozen `ForwardStep` built once per forward call (positions, per-layer-kind rope tables and
masks, the recorder). Blocks keep no state between calls. `Model.forward` is the same for every
architecture (embed -> blocks -> `head`); models differ only in what they load and in a few
hooks (`embed_scale`, `logit_softcap`, `attn_kinds`, `layer_kind`, `new_cache`).

Recording points of the forward itself: "resid" [T, n_embd], the residual stream after each
block (the input of the final norm after the last one), only when the recorder wants it.

Loading reports progress and can be cancelled without any model file knowing: every weight a
model builds is looked up through `Model.tensor_info`, which `load_model` hooks (through a
context variable) to count the bytes built so far and to poll `should_stop`.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from engine.errors import GGUFError, LoadCancelled, UnsupportedArchitectureError
from engine.gguf.dequant import dequantize
from engine.gguf.reader import GGUFFile, TensorInfo, open_gguf
from engine.kv_cache import KVCache, kv_cache_dtype
from engine.layers import GatedMLP, RMSNorm, RoPE, YarnParams, attention_mask
from engine.linear import Embedding, Linear, exact_mode, exact_weights, release_all
from engine.models.validate import validate_model_file
from engine.threads import set_threads
from engine.trace import Recorder

DEFAULT_N_CTX = 4096  # the training context is often 32k-128k: far too much KV cache by default
_F32 = 0  # ggml type id of float32

# general.architecture -> module that implements it (imported on first use).
ARCH_MODULES: dict[str, str] = {
    "llama": "engine.models.llama",
    "qwen2": "engine.models.qwen2",
    "qwen3": "engine.models.qwen3",
    "gemma3": "engine.models.gemma3",
    "qwen2moe": "engine.models.qwen2moe",
    "qwen3moe": "engine.models.qwen3moe",
    "olmoe": "engine.models.olmoe",
    "deepseek2": "engine.models.deepseek2",
    "glm4moe": "engine.models.glm4moe",
    "ernie4_5-moe": "engine.models.ernie4_5_moe",
    "gpt-oss": "engine.models.gpt_oss",
    "granitemoe": "engine.models.granitemoe",
    "lfm2moe": "engine.models.lfm2moe",
}
# general.architecture -> module for files of that architecture with `{arch}.expert_count` > 0,
# where that is a different family: Mixtral files declare `llama` with an expert count.
EXPERT_ARCH_MODULES: dict[str, str] = {
    "llama": "engine.models.mixtral",
}
_REGISTRY: dict[tuple[str, bool], type["Model"]] = {}  # (arch, expert variant) -> class

REQUIRED = object()

# Keys every decoder reads; "{arch}" is replaced by general.architecture. A tuple lists
# alternative keys, first found wins (old files use rope.scale_linear).
COMMON_KEYS: dict[str, tuple[str | tuple[str, ...], Any]] = {
    "n_layer": ("{arch}.block_count", REQUIRED),
    "n_embd": ("{arch}.embedding_length", REQUIRED),
    "n_ff": ("{arch}.feed_forward_length", REQUIRED),
    "n_head": ("{arch}.attention.head_count", REQUIRED),
    "n_head_kv": ("{arch}.attention.head_count_kv", None),
    "head_dim": ("{arch}.attention.key_length", None),
    "head_dim_v": ("{arch}.attention.value_length", None),
    "rms_eps": ("{arch}.attention.layer_norm_rms_epsilon", 1e-5),
    "n_ctx_train": ("{arch}.context_length", DEFAULT_N_CTX),
    "n_vocab": ("{arch}.vocab_size", None),
    "n_expert": ("{arch}.expert_count", 0),
    "rope_base": ("{arch}.rope.freq_base", 10000.0),
    "n_rot": ("{arch}.rope.dimension_count", None),
    "rope_scaling": ("{arch}.rope.scaling.type", "linear"),
    "rope_factor": (("{arch}.rope.scaling.factor", "{arch}.rope.scale_linear"), 0.0),
    "rope_orig_ctx": ("{arch}.rope.scaling.original_context_length", None),
    "rope_attn_factor": ("{arch}.rope.scaling.attn_factor", 1.0),
    "yarn_log_mul": ("{arch}.rope.scaling.yarn_log_multiplier", 0.0),
    "yarn_beta_fast": ("{arch}.rope.scaling.yarn_beta_fast", 32.0),
    "yarn_beta_slow": ("{arch}.rope.scaling.yarn_beta_slow", 1.0),
}


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters common to decoder-only transformers (see COMMON_KEYS)."""

    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int | None = None
    head_dim: int | None = None
    head_dim_v: int | None = None
    rms_eps: float = 1e-5
    n_ctx_train: int = DEFAULT_N_CTX
    n_vocab: int | None = None
    n_expert: int = 0
    rope_base: float = 10000.0
    n_rot: int | None = None
    rope_scaling: str = "linear"
    rope_factor: float = 0.0
    rope_orig_ctx: int | None = None
    rope_attn_factor: float = 1.0
    yarn_log_mul: float = 0.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0

    KEYS: ClassVar[dict[str, tuple[str | tuple[str, ...], Any]]] = COMMON_KEYS

    def __post_init__(self) -> None:
        derived = {
            "n_head_kv": self.n_head if self.n_head_kv is None else self.n_head_kv,
            "head_dim": self.n_embd // self.n_head if self.head_dim is None else self.head_dim,
        }
        derived["head_dim_v"] = derived["head_dim"] if self.head_dim_v is None else self.head_dim_v
        derived["n_rot"] = derived["head_dim"] if self.n_rot is None else self.n_rot
        derived["rope_orig_ctx"] = self.n_ctx_train if self.rope_orig_ctx is None else self.rope_orig_ctx
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def rope_freq_scale(self) -> float:
        """Multiplier on rotary frequencies (1 / scaling factor; 1 when unscaled)."""
        if self.rope_scaling == "none" or not self.rope_factor:
            return 1.0
        return 1.0 / self.rope_factor

    @classmethod
    def from_gguf(cls, gf: GGUFFile, **overrides: Any):
        return read_config(cls, gf, **overrides)


def _scalar(key: str, value: Any, gf: GGUFFile) -> Any:
    """Per-layer arrays (e.g. head counts) are fine only when every layer agrees."""
    if isinstance(value, np.ndarray):
        if value.size and np.all(value == value.flat[0]):
            return value.flat[0].item()
        raise UnsupportedArchitectureError(f"{gf.path.name}: per-layer values for {key} are not "
                                           f"supported ({value.tolist()})")
    return value


def read_config(cls: type, gf: GGUFFile, **overrides: Any):
    """Fill the frozen dataclass `cls` from gf.metadata through `cls.KEYS`."""
    arch = gf.architecture
    values: dict[str, Any] = {"arch": arch}
    for field_name, (keys, default) in cls.KEYS.items():
        keys = (keys,) if isinstance(keys, str) else keys
        for key in keys:
            key = key.format(arch=arch)
            if key in gf.metadata:
                values[field_name] = _scalar(key, gf.metadata[key], gf)
                break
        else:
            if default is REQUIRED:
                raise GGUFError(f"{gf.path}: metadata key {keys[0].format(arch=arch)!r} is missing")
            if default is not None:
                values[field_name] = default
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def register(*archs: str, experts: bool = False):
    """Class decorator: `@register("qwen2")` makes load_model build that class for the arch;
    `@register("llama", experts=True)` for the arch's files with an expert count (see
    EXPERT_ARCH_MODULES)."""
    def deco(cls):
        for arch in archs:
            _REGISTRY[(arch, experts)] = cls
        return cls
    return deco


def supported_architectures() -> tuple[str, ...]:
    return tuple(sorted(ARCH_MODULES))


def _has_experts(gf: GGUFFile) -> bool:
    n = gf.metadata.get(f"{gf.architecture}.expert_count", 0)
    return bool(np.max(n)) if isinstance(n, np.ndarray) and n.size else bool(n)


def model_class(gf: GGUFFile) -> type["Model"]:
    """The class `load_model` builds for gf: by architecture, then by expert count. Imports only
    that family's module (a dense file never imports an MoE module)."""
    arch = gf.architecture
    if arch not in ARCH_MODULES:
        raise UnsupportedArchitectureError(
            f"{gf.path.name}: architecture {arch or '(none)'!r} is not supported "
            f"(supported: {', '.join(supported_architectures())})")
    experts = arch in EXPERT_ARCH_MODULES and _has_experts(gf)
    importlib.import_module(EXPERT_ARCH_MODULES[arch] if experts else ARCH_MODULES[arch])
    return _REGISTRY[(arch, experts)]


# ----------------------------------------------------------------------------- the per-call step

@dataclass(frozen=True)
class AttnKind:
    """What the attention layers of one kind share for the model's lifetime."""

    rope: RoPE
    window: int | None = None  # sliding window in tokens (a key is seen while q - k < window)


@dataclass(frozen=True)
class AttnInputs:
    """What the attention layers of one kind read in one forward call."""

    rope: RoPE
    cos: torch.Tensor            # [T, n_rot] full-width cos (`RoPE.tables`, for `RoPE.rotate`)
    sin: torch.Tensor            # [T, n_rot] signed sin
    key_start: int               # attend over cached keys [key_start, start_pos + T)
    mask: torch.Tensor | None    # [T, start_pos + T - key_start] bool, True = visible; None: all


@dataclass(frozen=True)
class ForwardStep:
    """Everything a block needs from one forward call; built once per call, read-only.

    `attn` maps a layer kind ("global" | "sliding" | "mla", see `Model.layer_kinds`) to its
    rope tables and mask: every layer of a kind shares them. When the recorder wants
    "attn_probs" (and its `full_key_span` is not False), masks span all keys 0..start_pos+T-1
    (key_start 0), so recorded probabilities are [n_head, T, start_pos + T] with exact zeros
    where a key is not seen (a future key, or one outside a sliding window).
    """

    start_pos: int                    # position of the first of this call's tokens
    n_tokens: int                     # T
    attn: dict[str, AttnInputs]       # by layer kind
    recorder: Recorder | None = None

    @property
    def end(self) -> int:
        """Positions cached after this call: start_pos + n_tokens."""
        return self.start_pos + self.n_tokens


class Model(abc.ABC):
    """A decoder loaded from a GGUF file, with the one forward pass every architecture shares.

    A subclass sets `Config` and, in __init__, loads `embed`, `blocks` (each with `.layer`, its
    index, and called as `block(x, cache, step)`), `output_norm`, `lm_head`, and `attn_kinds`
    (per layer kind, the rope and sliding window its attention uses). Hooks for what differs:
    `layer_kind(i)`, `embed_scale`, `logit_softcap`, `new_cache` with `kv_bytes_per_token`,
    and `router`/`n_shared_experts` for mixture-of-experts models.
    """

    Config: ClassVar[type[TransformerConfig]] = TransformerConfig
    embed_scale: float | None = None   # Gemma multiplies token embeddings by sqrt(n_embd)
    logit_softcap: float = 0.0         # Gemma 3: logits = cap * tanh(logits / cap) when set
    router: Any = None                 # MoE: the engine.moe.RouterConfig every MoE layer uses
    n_shared_experts: int = 0          # MoE: always-on shared experts per MoE layer

    def __init__(self, gf: GGUFFile, config: TransformerConfig, n_ctx: int | None = None):
        self.gguf = gf
        self.config = config
        self.n_ctx = int(n_ctx) if n_ctx else min(config.n_ctx_train, DEFAULT_N_CTX)
        if self.n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {self.n_ctx}")
        self.attn_kinds: dict[str, AttnKind] = {}
        self.blocks: list = []

    @classmethod
    def read_config(cls, gf: GGUFFile) -> TransformerConfig:
        """The hyperparameters of gf for this class, read from metadata (no weight is read)."""
        vocab = gf.tensor("token_embd.weight").shape[0] if gf.has_tensor("token_embd.weight") else None
        return cls.Config.from_gguf(gf, **({"n_vocab": vocab} if vocab else {}))

    @classmethod
    def from_gguf(cls, gf: GGUFFile, n_ctx: int | None = None) -> "Model":
        return cls(gf, cls.read_config(gf), n_ctx)

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    # -- plain facts for the inspection panels ------------------------------------------------

    def layer_kind(self, layer: int) -> str:
        """"global" (causal attention over every earlier token), "sliding" (a window of
        `layer_windows[layer]` tokens), "mla" (DeepSeek's latent attention, causal) or "conv"
        (LFM2's short convolution: no attention, nothing recorded as "attn_probs")."""
        return "global"

    @property
    def layer_kinds(self) -> list[str]:
        return [self.layer_kind(i) for i in range(self.config.n_layer)]

    @property
    def layer_windows(self) -> list[int | None]:
        """Per layer, its sliding window in tokens (None: it sees every earlier token)."""
        return [self.attn_kinds[k].window for k in self.layer_kinds]

    @property
    def kv_head_of(self) -> list[int]:
        """Per query head, the kv head it reads (grouped-query attention: h // (Hq / Hkv))."""
        c = self.config
        group = c.n_head // c.n_head_kv
        return [h // group for h in range(c.n_head)]

    @property
    def moe_layers(self) -> list[int]:
        """Indices of the layers whose FFN is a routed mixture of experts (empty when dense)."""
        return [b.layer for b in self.blocks if getattr(b, "moe", None) is not None]

    @property
    def router_info(self) -> dict[str, Any] | None:
        """{"n_expert", "n_used", "n_shared", "gating": "softmax" | "sigmoid"}; None when dense."""
        r = self.router
        if r is None:
            return None
        return {"n_expert": r.n_expert, "n_used": r.n_used, "n_shared": self.n_shared_experts,
                "gating": r.gating_name}

    # -- cache --------------------------------------------------------------------------------

    @classmethod
    def kv_bytes_per_token(cls, config: TransformerConfig) -> int:
        """Bytes `new_cache` allocates per context position: keys and values for every layer
        in `kv_cache_dtype()`. Sliding-window layers (Gemma 3) get the full context too:
        recorded attention spans every key, and decode steps only slice the window out of it."""
        c = config
        return c.n_layer * c.n_head_kv * (c.head_dim + c.head_dim_v) * kv_cache_dtype().itemsize

    def new_cache(self, n_ctx: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for n_ctx positions (default: the model's), in `dtype` (default
        `kv_cache_dtype()`)."""
        c = self.config
        return KVCache(c.n_layer, c.n_head_kv, n_ctx or self.n_ctx, c.head_dim, c.head_dim_v,
                       dtype or kv_cache_dtype())

    @property
    def cache_bytes_per_token(self) -> int:
        return self.kv_bytes_per_token(self.config)

    # -- forward ------------------------------------------------------------------------------

    def make_step(self, start_pos: int, n_tokens: int,
                  recorder: Recorder | None = None) -> ForwardStep:
        """The per-call context of `forward`: rope tables and mask once per layer kind."""
        # A LiveTrace keeps only the last row of a step and pads the cut-off keys itself:
        # spanning every key would make sliding layers read the whole cache each step.
        full = (recorder is not None and recorder.wants("attn_probs")
                and getattr(recorder, "full_key_span", True))
        attn = {}
        for kind, spec in self.attn_kinds.items():
            key_start, mask = attention_mask(start_pos, n_tokens, spec.window, full)
            cos, sin = spec.rope.tables(start_pos, n_tokens)  # [T, n_rot]
            attn[kind] = AttnInputs(spec.rope, cos, sin, key_start, mask)
        return ForwardStep(start_pos, n_tokens, attn, recorder)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: Any, start_pos: int,
                recorder: Recorder | None = None, *, all_logits: bool = True) -> torch.Tensor:
        """ids [T] -> logits [T, n_vocab] float32 (only the last row when all_logits=False)."""
        ids = _as_ids(ids)
        T = ids.shape[0]
        if recorder is not None:
            recorder.begin_step(start_pos, T)
        step = self.make_step(start_pos, T, recorder)
        x = self.embed(ids)  # [T, n_embd]
        if self.embed_scale is not None:
            x = x * self.embed_scale
        resid = recorder is not None and recorder.wants("resid")
        for block in self.blocks:
            x = block(x, cache, step)  # [T, n_embd]
            if resid:
                recorder.record("resid", block.layer, x)
        if not all_logits:
            x = x[-1:]
        return self._head(x)  # [T, n_vocab]

    @torch.inference_mode()
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, n_embd] (a residual stream) -> logits [T, n_vocab] float32: the final norm,
        the output head and any logit soft-cap, exactly what forward applies after the last
        block, so the logit lens of the last "resid" is the model's logits."""
        return self._head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.output_norm(x))  # [T, n_vocab]
        if self.logit_softcap:
            cap = self.logit_softcap
            logits = logits.div_(cap).tanh_().mul_(cap)  # in place: [T, 262k] is MBs a step
        return logits

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    # -- loading helpers ----------------------------------------------------------------------

    @classmethod
    def resident_bytes(cls, gf: GGUFFile, info: TensorInfo, packed: bool) -> int:
        """Bytes a loaded model holds for tensor `info` (see `estimate_memory`): matrices keep
        their file encoding when `packed` (engine.linear), else become float32; vectors are
        float32; stacked experts are read through the file's map (engine.moe); an untied
        token embedding is never loaded (rows are decoded from the file per lookup)."""
        if info.name == "token_embd.weight" and gf.has_tensor("output.weight"):
            return 0
        if "_exps." in info.name or (len(info.shape) == 2 and (packed or info.ggml_type == _F32)):
            return info.n_bytes
        return 4 * info.n_elements

    def tensor_info(self, name: str, required: bool = True) -> TensorInfo | None:
        """Every weight is looked up here right before it is built: the load hooks' one door."""
        if self.gguf.has_tensor(name):
            info = self.gguf.tensor(name)
            hooks = _load_hooks.get()
            if hooks is not None and hooks.gf is self.gguf:
                hooks.visit(info)
            return info
        if required:
            raise GGUFError(f"{self.gguf.path}: tensor {name!r} is missing "
                            f"(required by the {self.config.arch} architecture)")
        return None

    def load_linear(self, prefix: str, required: bool = True) -> Linear | None:
        """`{prefix}.weight` (+ `{prefix}.bias` if present) as a Linear."""
        info = self.tensor_info(f"{prefix}.weight", required)
        if info is None:
            return None
        return Linear.from_gguf(self.gguf, info, self.tensor_info(f"{prefix}.bias", required=False))

    def load_linears(self, prefixes: list[str]) -> list:
        """Several `{prefix}.weight` (+ bias) projections of one input, e.g. q/k/v or gate/up,
        loaded into one buffer when their types allow so `FusedLinear` needs no copy."""
        from engine.linear import load_stacked  # noqa: PLC0415

        infos = [self.tensor_info(f"{p}.weight") for p in prefixes]
        biases = [self.tensor_info(f"{p}.bias", required=False) for p in prefixes]
        return load_stacked(self.gguf, infos, biases)

    def load_vector(self, name: str, required: bool = True) -> torch.Tensor | None:
        info = self.tensor_info(name, required)
        return None if info is None else dequantize(self.gguf, info)

    def load_gated_mlp(self, layer: int, suffix: str = "", activation: str = "silu") -> GatedMLP:
        """`blk.{layer}.ffn_{gate,up,down}{suffix}` as one gated MLP: SwiGLU (silu) or GeGLU
        (gelu_tanh); suffix "_shexp" for an MoE layer's shared experts."""
        p = f"blk.{layer}.ffn_"
        return GatedMLP(*self.load_linears([f"{p}gate{suffix}", f"{p}up{suffix}"]),
                        self.load_linear(f"{p}down{suffix}"), activation)

    def load_norm(self, prefix: str, required: bool = True) -> RMSNorm | None:
        """`{prefix}.weight` as an RMSNorm with the config's epsilon."""
        w = self.load_vector(f"{prefix}.weight", required)
        return None if w is None else RMSNorm(w, self.config.rms_eps)

    def load_embedding(self) -> Embedding:
        """token_embd. When the output head is tied to it, the table is loaded once (packed or
        f32, as `Linear.from_gguf` decides) and serves both lookups and `load_output`."""
        info = self.tensor_info("token_embd.weight")
        if self.gguf.has_tensor("output.weight"):
            return Embedding(self.gguf, info)  # rows decoded straight from the file
        self._tied_head = Linear.from_gguf(self.gguf, info)
        return Embedding(self.gguf, info, table=self._tied_head)

    def load_output(self) -> Linear:
        """lm_head: `output.weight`, or the token embedding when the file ties them."""
        if self.gguf.has_tensor("output.weight"):
            return self.load_linear("output")
        head = getattr(self, "_tied_head", None)
        return head if head is not None else Linear.from_gguf(self.gguf,
                                                              self.tensor_info("token_embd.weight"))

    def make_rope(self, neox: bool, base: float | None = None, scaled: bool = True,
             freq_factors: torch.Tensor | None = None) -> RoPE:
        """RoPE from the config's rope keys (base/scaling overridable, e.g. gemma3 local layers)."""
        c = self.config
        scale = c.rope_freq_scale if scaled else 1.0
        yarn = None
        if scaled and c.rope_scaling == "yarn":
            yarn = YarnParams(orig_ctx=c.rope_orig_ctx, beta_fast=c.yarn_beta_fast,
                              beta_slow=c.yarn_beta_slow, attn_factor=c.rope_attn_factor,
                              log_mul=c.yarn_log_mul)
        elif c.rope_scaling not in ("none", "linear"):
            raise UnsupportedArchitectureError(
                f"{self.gguf.path.name}: rope scaling {c.rope_scaling!r} is not supported "
                f"(supported: none, linear, yarn, llama3 rope_freqs)")
        return RoPE(c.n_rot, c.rope_base if base is None else base, neox, freq_scale=scale,
                    freq_factors=freq_factors, yarn=yarn)


# ----------------------------------------------------------------------------- memory estimate

@dataclass(frozen=True)
class MemoryEstimate:
    """What a model built from a file will hold, from its header alone (see estimate_memory)."""

    weights_bytes: int            # weights as the engine will hold them
    cache_bytes: int              # the KV (or MLA latent) cache preallocated for n_ctx positions
    cache_bytes_per_token: int
    representation: str           # "packed Q4_K/Q6_K", "float32", "float32, experts packed Q8_0"
    n_ctx: int                    # the context the cache is sized for

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.cache_bytes


def estimate_memory(gf: GGUFFile, n_ctx: int | None = None) -> MemoryEstimate:
    """Bytes the model in gf will need once loaded with `load_model(gf, n_ctx)`, without
    loading a weight: its architecture's cache formula for n_ctx (default as load_model's),
    plus the weights as `engine.linear` will store them: packed in their file encoding when the
    fused kernels are available and exact mode is off; without the kernels, the types
    `engine.packed_fallback` holds as int4 planes at that layout's size, other matrices as
    float32; in exact mode, matrices as float32.
    Stacked MoE experts are counted at file size (read through the map when routed to);
    without the kernels each expert is re-laid as int4 planes the first time it is routed to,
    so a long run can grow to at most `engine.moe.INT4_EXPERT_BUDGET` (1.2) times the experts'
    bytes, which this estimate of the loaded model does not count."""
    from engine import kernels  # noqa: PLC0415  (compiles the kernels on first use)
    from engine.packed_fallback import int4_bytes, int4_supported  # noqa: PLC0415

    cls = model_class(gf)
    config = cls.read_config(gf)
    n_ctx = int(n_ctx) if n_ctx else min(config.n_ctx_train, DEFAULT_N_CTX)
    if n_ctx <= 0:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    packed = not exact_mode()
    kernels_on = packed and kernels.available()
    weights = 0
    kept: dict[str, int] = {}     # file encodings held as they are (not float32) -> bytes
    int4: dict[str, int] = {}     # types held as the fallback's int4 planes -> bytes
    for info in gf.tensors:
        n = cls.resident_bytes(gf, info, kernels_on)
        if (packed and not kernels_on and n and len(info.shape) == 2 and "_exps." not in info.name
                and int4_supported(info.ggml_type)):
            n = int4_bytes(info.ggml_type, *info.shape)
            int4[info.type_name] = int4.get(info.type_name, 0) + n
        elif n and n == info.n_bytes and info.ggml_type != _F32:
            kept[info.type_name] = kept.get(info.type_name, 0) + n
        weights += n

    def by_size(d: dict[str, int]) -> str:
        return "/".join(sorted(d, key=lambda t: (-d[t], t)))  # most bytes first

    if int4:
        representation = f"int4 planes {by_size(int4)} (no kernels)"
        if kept:
            representation += f", experts packed {by_size(kept)}"
    elif not kept:
        representation = "float32"
    elif kernels_on:
        representation = f"packed {by_size(kept)}"
    else:
        representation = f"float32, experts packed {by_size(kept)}"
    per_token = cls.kv_bytes_per_token(config)
    return MemoryEstimate(weights_bytes=weights, cache_bytes=per_token * n_ctx,
                          cache_bytes_per_token=per_token, representation=representation,
                          n_ctx=n_ctx)


def _as_ids(ids: torch.Tensor | list[int]) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        ids = torch.tensor(list(ids), dtype=torch.long)
    return ids.reshape(-1).long()


class _LoadHooks:
    """Progress (fraction of the file's tensor bytes built) and cancellation for one load."""

    def __init__(self, gf: GGUFFile, progress: Callable[[float], None] | None,
                 should_stop: Callable[[], bool] | None):
        self.gf = gf
        self.progress, self.should_stop = progress, should_stop
        self.total = sum(t.n_bytes for t in gf.tensors) or 1
        self.seen: set[int] = set()  # tensor indices: a tied head is looked up twice
        self.done = 0

    def visit(self, info: TensorInfo) -> None:
        if self.should_stop is not None and self.should_stop():
            raise LoadCancelled("loading cancelled")
        if info.index in self.seen:
            return
        # Models build one weight at a time, so every tensor looked up before this one is built.
        if self.progress is not None and self.done:
            self.progress(min(self.done / self.total, 1.0))
        self.seen.add(info.index)
        self.done += info.n_bytes


_load_hooks: contextvars.ContextVar[_LoadHooks | None] = contextvars.ContextVar(
    "llmlens_load_hooks", default=None)


def load_model(path_or_gguf: str | os.PathLike | GGUFFile, n_ctx: int | None = None,
               threads: int | None = None, exact: bool | None = None, *,
               progress: Callable[[float], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Model:
    """Open a GGUF file (or use an open one) and build the model its architecture names.

    Quantized weights stay packed (fused kernels) unless `exact=True` (or LLMLENS_EXACT_WEIGHTS=1
    with exact=None), which dequantizes them to float32 for exact-product reference checks.

    `progress(fraction)` is called from this thread as weights are built (increasing, in
    (0, 1], ending with exactly 1.0); `should_stop()` is polled before every weight (many times
    per layer) and, once true, the load raises `LoadCancelled`: the partly built model is
    dropped and a file this call opened is closed.
    """
    set_threads(threads)  # once per load; a no-op when the count is already in force
    opened = not isinstance(path_or_gguf, GGUFFile)
    gf = open_gguf(path_or_gguf) if opened else path_or_gguf
    cancelled = False
    try:
        cls = model_class(gf)
        validate_model_file(gf, n_ctx)  # one-line errors for bad hyperparameters, before any weight
        token = _load_hooks.set(_LoadHooks(gf, progress, should_stop)
                                if progress is not None or should_stop is not None else None)
        try:
            with exact_weights(exact) if exact is not None else contextlib.nullcontext():
                model = cls.from_gguf(gf, n_ctx)
        finally:
            _load_hooks.reset(token)
    except LoadCancelled:
        cancelled = True  # raised again below, outside this block: see there
    except BaseException:
        if opened:
            gf.close()
        raise
    if cancelled:
        # A fresh exception, outside the except block: the caught one's traceback holds the
        # frames of the half-built model, which would keep its weights alive as long as the
        # caller keeps the exception.
        if opened:
            gf.close()
        else:
            release_all(gf)
        raise LoadCancelled("loading cancelled")
    release_all(gf)  # everything needed is copied out; mapped pages would only add to RSS
    if progress is not None:
        progress(1.0)
    return model
