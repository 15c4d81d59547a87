"""What every model shares: the hyperparameter key table, the `Model` base class, the arch
registry and `load_model`.

Hyperparameters come from GGUF metadata through a table of keys (field -> key(s), default)
into a frozen dataclass per architecture; derived defaults are filled in `__post_init__`.
Each architecture lives in `engine/models/<arch>.py` and registers its class with `@register`.

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
from engine.kv_cache import KVCache
from engine.layers import RMSNorm, RoPE, YarnParams
from engine.linear import Embedding, Linear, exact_weights, release_all
from engine.threads import set_threads
from engine.trace import Recorder

DEFAULT_N_CTX = 4096  # the training context is often 32k-128k: far too much KV cache by default

# general.architecture -> module that implements it (imported on first use).
ARCH_MODULES: dict[str, str] = {
    "llama": "engine.models.llama",
    "qwen2": "engine.models.qwen2",
    "qwen3": "engine.models.qwen3",
    "gemma3": "engine.models.gemma3",
    "qwen2moe": "engine.models.qwen2moe",
    "qwen3moe": "engine.models.qwen2moe",
    "olmoe": "engine.models.olmoe",
    "deepseek2": "engine.models.deepseek2",
}
_REGISTRY: dict[str, type["Model"]] = {}

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


def register(*archs: str):
    """Class decorator: `@register("qwen2")` makes load_model build that class for the arch."""
    def deco(cls):
        for arch in archs:
            _REGISTRY[arch] = cls
        return cls
    return deco


def supported_architectures() -> tuple[str, ...]:
    return tuple(sorted(ARCH_MODULES))


class Model(abc.ABC):
    """A decoder loaded from a GGUF file. Subclasses set Config and implement __init__/forward."""

    Config: ClassVar[type[TransformerConfig]] = TransformerConfig

    def __init__(self, gf: GGUFFile, config: TransformerConfig, n_ctx: int | None = None):
        self.gguf = gf
        self.config = config
        self.n_ctx = int(n_ctx) if n_ctx else min(config.n_ctx_train, DEFAULT_N_CTX)
        if self.n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {self.n_ctx}")

    @classmethod
    def from_gguf(cls, gf: GGUFFile, n_ctx: int | None = None) -> "Model":
        vocab = gf.tensor("token_embd.weight").shape[0] if gf.has_tensor("token_embd.weight") else None
        config = cls.Config.from_gguf(gf, **({"n_vocab": vocab} if vocab else {}))
        return cls(gf, config, n_ctx)

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, c.n_head_kv, n_ctx or self.n_ctx, c.head_dim, c.head_dim_v)

    @property
    def cache_bytes_per_token(self) -> int:
        c = self.config
        return c.n_layer * c.n_head_kv * (c.head_dim + c.head_dim_v) * 4

    @abc.abstractmethod
    def forward(self, ids: torch.Tensor, cache: KVCache, start_pos: int,
                recorder: Recorder | None = None, *, all_logits: bool = True) -> torch.Tensor:
        """ids [T] -> logits [T, n_vocab] float32 (only the last row when all_logits=False)."""

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.forward(*args, **kwargs)

    # -- loading helpers ----------------------------------------------------------------------

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

    def load_experts(self, name: str):
        """A stacked `[E, out, in]` expert tensor (zero-copy over the file), see engine/moe.py."""
        from engine.moe import StackedExperts  # noqa: PLC0415

        info = self.tensor_info(name)
        return StackedExperts(self.gguf.raw(info), info.ggml_type, info.shape, name)

    def load_vector(self, name: str, required: bool = True) -> torch.Tensor | None:
        info = self.tensor_info(name, required)
        return None if info is None else dequantize(self.gguf, info)

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
        arch = gf.architecture
        if arch not in ARCH_MODULES:
            raise UnsupportedArchitectureError(
                f"{gf.path.name}: architecture {arch or '(none)'!r} is not supported "
                f"(supported: {', '.join(supported_architectures())})")
        importlib.import_module(ARCH_MODULES[arch])
        token = _load_hooks.set(_LoadHooks(gf, progress, should_stop)
                                if progress is not None or should_stop is not None else None)
        try:
            with exact_weights(exact) if exact is not None else contextlib.nullcontext():
                model = _REGISTRY[arch].from_gguf(gf, n_ctx)
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
