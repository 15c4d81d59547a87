"""Check a GGUF model file's hyperparameters and tensor shapes before anything is built.

llama.cpp refuses a file whose metadata contradicts its tensors before it allocates anything
(`llama_model::load_hparams`, then `create_tensor` checks every shape). We do the same, once,
for every architecture, so that a bad file ends in one line naming the key or tensor, what it
holds and what was expected, never in a ZeroDivisionError, a shape mismatch deep in a forward
pass or an attempt to allocate terabytes:

    model.gguf: qwen2moe.attention.head_count = 7 does not divide embedding_length = 64
    model.gguf: tensor blk.0.ffn_gate_exps.weight has shape [8, 32, 64], expected
        [n_expert, n_ff_exp, n_embd] = [7, 32, 64] (qwen2moe.expert_count = 7)

Three steps, in order:
1. every numeric key the engine reads is of the right kind and in range (`PARAMS`);
2. the values agree with one another (head counts divide, top-k <= experts, block_count
   equals the number of `blk.N` groups in the file, ...);
3. every tensor the architecture uses has the shape its rule in `ARCH_RULES` implies: a table
   of (name pattern -> shape formula over the hyperparameters), evaluated per layer.
Then the KV cache the model will preallocate is sized and refused (ModelTooLargeError) when it
could not fit in this machine's memory at all.

Special token ids are checked where they are used, by the tokenizer loader
(`engine/tokenizer/vocab.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import (GGUFError, LLMLensError, ModelTooLargeError,
                           UnsupportedArchitectureError)
from engine.gguf.reader import GGUFFile, StringArray

# Longest context_length we believe (134M): over 10x the largest any released model claims.
MAX_CONTEXT = 1 << 27
# Always mixture-of-experts (Mixtral is `llama` with an expert count).
MOE_ARCHS = ("qwen2moe", "qwen3moe", "olmoe", "glm4moe", "ernie4_5-moe")


# ----------------------------------------------------------------------------- step 1: values

@dataclass(frozen=True)
class Param:
    """One numeric key: `{arch}.<key>` -> symbol, with the range a sane file keeps it in."""

    sym: str
    key: str                       # after "{arch}."; alternatives separated by "|"
    kind: str = "int"              # "int" | "float"
    lo: float = 1                  # inclusive lower bound ...
    hi: float = math.inf           # ... and inclusive upper bound
    lo_open: bool = False          # lower bound exclusive (floats: eps > 0, base > 1)
    default: Any = None            # None: absent stays absent (derived later)
    required: bool = False
    archs: tuple[str, ...] = ()    # () = every architecture


PARAMS: tuple[Param, ...] = (
    Param("n_layer", "block_count", required=True),
    Param("n_ctx_train", "context_length", hi=MAX_CONTEXT, default=4096),
    Param("n_embd", "embedding_length", required=True),
    Param("n_ff", "feed_forward_length"),
    Param("n_head", "attention.head_count", required=True),
    Param("n_head_kv", "attention.head_count_kv"),
    Param("head_dim", "attention.key_length"),
    Param("head_dim_v", "attention.value_length"),
    Param("n_rot", "rope.dimension_count"),
    Param("n_vocab_key", "vocab_size"),
    Param("n_expert", "expert_count", lo=0, default=0),
    Param("n_expert_used", "expert_used_count", lo=0, default=0),
    Param("n_ff_exp", "expert_feed_forward_length"),
    Param("n_ff_shexp", "expert_shared_feed_forward_length"),
    Param("rope_orig_ctx", "rope.scaling.original_context_length"),
    Param("rms_eps", "attention.layer_norm_rms_epsilon", "float", lo=0, hi=1, lo_open=True),
    Param("rope_base", "rope.freq_base", "float", lo=1, lo_open=True),
    # 0 = unscaled; a factor f divides every rotary frequency
    Param("rope_factor", "rope.scaling.factor|rope.scale_linear", "float", lo=0, hi=1e6),
    # the next three multiply attention scores or rope magnitudes (squared): real files keep
    # them near 1, and past ~16 float32 scores overflow
    Param("rope_attn_factor", "rope.scaling.attn_factor", "float", lo=0, hi=16, lo_open=True),
    Param("yarn_log_mul", "rope.scaling.yarn_log_multiplier", "float", lo=0, hi=16),
    Param("yarn_beta_fast", "rope.scaling.yarn_beta_fast", "float", lo=0, hi=1e6, lo_open=True),
    Param("yarn_beta_slow", "rope.scaling.yarn_beta_slow", "float", lo=0, hi=1e6, lo_open=True),
    Param("expert_weights_scale", "expert_weights_scale", "float", lo=0, hi=1e3),
    # gemma3
    Param("sliding_window", "attention.sliding_window", lo=0, archs=("gemma3",)),
    Param("rope_base_local", "rope.freq_base_swa", "float", lo=1, lo_open=True,
          archs=("gemma3",)),
    Param("final_logit_softcap", "final_logit_softcapping", "float", lo=0,
          archs=("gemma3",)),
    # deepseek2 (MLA)
    Param("q_lora", "attention.q_lora_rank", lo=0, default=0, archs=("deepseek2",)),
    Param("kv_lora", "attention.kv_lora_rank", default=512, archs=("deepseek2",)),
    Param("qk_head_mla", "attention.key_length_mla", archs=("deepseek2",)),
    Param("v_head_mla", "attention.value_length_mla", archs=("deepseek2",)),
    Param("n_dense_lead", "leading_dense_block_count", lo=0, default=0, archs=("deepseek2",)),
    Param("n_expert_shared", "expert_shared_count", lo=0, default=0, archs=("deepseek2",)),
    Param("expert_gating", "expert_gating_func", lo=0, hi=2, default=0, archs=("deepseek2",)),
    Param("n_groups", "expert_group_count", lo=0, default=0, archs=("deepseek2",)),
    Param("n_groups_used", "expert_group_used_count", lo=0, default=0, archs=("deepseek2",)),
    # glm4moe (DeepSeek-V3-style routing, NextN blocks counted in block_count), ernie4_5-moe
    Param("n_nextn", "nextn_predict_layers", lo=0, default=0, archs=("glm4moe",)),
    Param("n_dense_lead", "leading_dense_block_count", lo=0, default=0,
          archs=("glm4moe", "ernie4_5-moe")),
    Param("n_expert_shared", "expert_shared_count", lo=0, default=0,
          archs=("glm4moe", "ernie4_5-moe")),
    Param("expert_gating", "expert_gating_func", lo=0, hi=2, default=0, archs=("glm4moe",)),
    Param("n_groups", "expert_group_count", lo=0, default=0, archs=("glm4moe",)),
    Param("n_groups_used", "expert_group_used_count", lo=0, default=0, archs=("glm4moe",)),
    Param("moe_step", "interleave_moe_layer_step", lo=1, default=1, archs=("ernie4_5-moe",)),
)


class _Checker:
    """Reads values out of one file's metadata and raises one-line GGUFErrors about them."""

    def __init__(self, gf: GGUFFile):
        self.gf = gf
        self.arch = gf.architecture
        self.name = gf.path.name
        self.values: dict[str, Any] = {}
        self.keys: dict[str, str] = {}     # symbol -> the metadata key it came from

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.name}: {problem}")

    def key_of(self, sym: str) -> str:
        return self.keys.get(sym, sym)

    def show(self, sym: str) -> str:
        """`qwen2moe.attention.head_count = 7` (or `n_rot = 16` for a derived value)."""
        return f"{self.key_of(sym)} = {_fmt(self.values[sym])}"

    def read(self, p: Param) -> None:
        for suffix in p.key.split("|"):
            key = f"{self.arch}.{suffix}"
            if key in self.gf.metadata:
                break
        else:
            if p.required:
                raise self.fail(f"metadata key {key!r} is missing")
            if p.default is not None:
                self.values[p.sym] = p.default
            return
        raw = self.gf.metadata[key]
        if p.sym == "n_head_kv" and self.arch in KV_PER_LAYER_ARCHS:
            raw = self._kv_per_layer(key, raw)
        value = self._scalar(key, raw)
        self.keys[p.sym] = key
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{key} = {_fmt(value)} is not a number")
        if p.kind == "int":
            if not isinstance(value, int):
                raise self.fail(f"{key} = {_fmt(value)} is not an integer")
        else:
            value = float(value)
            if not math.isfinite(value):
                finite = _range(p).replace("a number", "a finite number")
                raise self.fail(f"{key} = {_fmt(value)}, expected {finite}")
        low_ok = value > p.lo if p.lo_open else value >= p.lo
        if not (low_ok and value <= p.hi):
            raise self.fail(f"{key} = {_fmt(value)}, expected {_range(p)}")
        self.values[p.sym] = value

    def _kv_per_layer(self, key: str, raw: Any) -> int:
        """Hybrid models (LFM2) list kv heads per layer, 0 for a layer without attention: keep
        the list as `kv_heads` (for the rules' `when`) and return the attention layers' count,
        which must be the same everywhere (as the engine requires)."""
        n_layer = self.values["n_layer"]
        kv = [int(x) for x in np.atleast_1d(np.asarray(raw)).tolist()]
        kv = kv * n_layer if len(kv) == 1 else kv
        if len(kv) != n_layer:
            raise self.fail(f"{key} has {len(kv)} entries, expected one per block "
                            f"({self.show('n_layer')})")
        counts = sorted({x for x in kv if x})
        if len(counts) > 1 or any(x < 0 for x in kv):
            raise UnsupportedArchitectureError(
                f"{self.name}: per-layer values for {key} are not supported ({kv})")
        self.values["kv_heads"] = kv
        return counts[0] if counts else self.values["n_head"]

    def _scalar(self, key: str, value: Any) -> Any:
        """Per-layer arrays are read (as the engine reads them) only when every layer agrees."""
        if isinstance(value, np.ndarray):
            if value.size and np.all(value == value.flat[0]):
                return value.flat[0].item()
            raise UnsupportedArchitectureError(
                f"{self.name}: per-layer values for {key} are not supported ({value.tolist()})")
        return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)  # 0.0, nan, inf
        return text if len(text) <= 10 else f"{value:.7g}"  # float32 keys: 1e-06, not 9.99...e-07
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _range(p: Param) -> str:
    if p.kind == "int":
        if p.hi == math.inf:
            return f"an integer >= {int(p.lo)}"
        return f"an integer in [{int(p.lo)}, {int(p.hi)}]"
    if p.hi == math.inf:
        return f"a number {'>' if p.lo_open else '>='} {p.lo:g}"
    return f"a number in {'(' if p.lo_open else '['}{p.lo:g}, {p.hi:g}]"


# ----------------------------------------------------------------------------- step 3: tensor rules

REQUIRED = "required"
OPTIONAL = "optional"


@dataclass(frozen=True)
class Rule:
    """`blk.{i}.<name>` (or a global tensor) must have `shape`, a comma-separated list of
    formulas over the hyperparameter symbols. `need` is REQUIRED, OPTIONAL, or the name of
    another tensor of the same layer whose presence makes this one required (shared experts);
    `when` (a formula over the symbols, per layer) says whether the rule applies at all."""

    name: str
    shape: str
    need: str = REQUIRED
    when: str = ""


def _linear_biases(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """Every 2-D `X.weight` may come with an `X.bias` [out] (qwen2's q/k/v biases)."""
    out = []
    for r in rules:
        out.append(r)
        dims = r.shape.split(",")
        if r.name.endswith(".weight") and len(dims) == 2 and "_exps" not in r.name:
            out.append(Rule(r.name[: -len("weight")] + "bias", dims[0].strip(), OPTIONAL, r.when))
    return tuple(out)


GLOBAL = (
    Rule("token_embd.weight", "n_vocab, n_embd"),
    Rule("output_norm.weight", "n_embd"),
    Rule("output.weight", "n_vocab, n_embd", OPTIONAL),  # absent: tied to token_embd
)
ATTN = (
    Rule("attn_norm.weight", "n_embd"),
    Rule("attn_q.weight", "n_head * head_dim, n_embd"),
    Rule("attn_k.weight", "n_head_kv * head_dim, n_embd"),
    Rule("attn_v.weight", "n_head_kv * head_dim_v, n_embd"),
    Rule("attn_output.weight", "n_embd, n_head * head_dim_v"),
)
QK_NORM_PER_HEAD = (Rule("attn_q_norm.weight", "head_dim"), Rule("attn_k_norm.weight", "head_dim"))
QK_NORM_ALL_HEADS = (Rule("attn_q_norm.weight", "n_head * head_dim"),
                     Rule("attn_k_norm.weight", "n_head_kv * head_dim"))
FFN_DENSE = (
    Rule("ffn_norm.weight", "n_embd"),
    Rule("ffn_gate.weight", "n_ff, n_embd", when="not moe"),
    Rule("ffn_up.weight", "n_ff, n_embd", when="not moe"),
    Rule("ffn_down.weight", "n_embd, n_ff", when="not moe"),
)
FFN_MOE = (
    Rule("ffn_gate_inp.weight", "n_expert, n_embd", when="moe"),
    Rule("ffn_gate_exps.weight", "n_expert, n_ff_exp, n_embd", when="moe"),
    Rule("ffn_up_exps.weight", "n_expert, n_ff_exp, n_embd", when="moe"),
    Rule("ffn_down_exps.weight", "n_expert, n_embd, n_ff_exp", when="moe"),
)
QWEN2MOE_SHARED = (
    Rule("ffn_gate_shexp.weight", "n_ff_shexp, n_embd", OPTIONAL, when="moe"),
    Rule("ffn_up_shexp.weight", "n_ff_shexp, n_embd", "ffn_gate_shexp.weight", when="moe"),
    Rule("ffn_down_shexp.weight", "n_embd, n_ff_shexp", "ffn_gate_shexp.weight", when="moe"),
    Rule("ffn_gate_inp_shexp.weight", "n_embd", "ffn_gate_shexp.weight", when="moe"),
)
MLA = (
    Rule("attn_norm.weight", "n_embd"),
    Rule("attn_q.weight", "n_head * qk_head, n_embd", when="q_lora == 0"),
    Rule("attn_q_a.weight", "q_lora, n_embd", when="q_lora > 0"),
    Rule("attn_q_a_norm.weight", "q_lora", when="q_lora > 0"),
    Rule("attn_q_b.weight", "n_head * qk_head, q_lora", when="q_lora > 0"),
    Rule("attn_kv_a_mqa.weight", "kv_lora + n_rot, n_embd"),
    Rule("attn_kv_a_norm.weight", "kv_lora"),
    # current converters split kv_b per head (k_b stored transposed); older ones write one
    Rule("attn_k_b.weight", "n_head, kv_lora, qk_nope", when="split_kv_b"),
    Rule("attn_v_b.weight", "n_head, v_head, kv_lora", when="split_kv_b"),
    Rule("attn_kv_b.weight", "n_head * (qk_nope + v_head), kv_lora", when="not split_kv_b"),
    Rule("attn_output.weight", "n_embd, n_head * v_head"),
)
DEEPSEEK2_SHARED = (
    Rule("exp_probs_b.bias", "n_expert", OPTIONAL, when="moe"),
    Rule("ffn_gate_shexp.weight", "n_ff_exp * n_expert_shared, n_embd",
         when="moe and n_expert_shared > 0"),
    Rule("ffn_up_shexp.weight", "n_ff_exp * n_expert_shared, n_embd",
         when="moe and n_expert_shared > 0"),
    Rule("ffn_down_shexp.weight", "n_embd, n_ff_exp * n_expert_shared",
         when="moe and n_expert_shared > 0"),
)
GLM4MOE_LAYER = (
    Rule("attn_norm.weight", "n_embd"),
    Rule("attn_q.weight", "n_head * head_dim, n_embd"),
    Rule("attn_k.weight", "n_head_kv * head_dim, n_embd"),
    Rule("attn_v.weight", "n_head_kv * head_dim_v, n_embd"),
    Rule("attn_output.weight", "n_embd, n_head * head_dim_v"),
    Rule("attn_q_norm.weight", "head_dim", OPTIONAL),      # GLM-4.5 has them, -Air not
    Rule("attn_k_norm.weight", "head_dim", "attn_q_norm.weight"),
    Rule("post_attention_norm.weight", "n_embd"),          # the FFN's input norm
    Rule("ffn_gate.weight", "n_ff, n_embd", when="not moe"),
    Rule("ffn_up.weight", "n_ff, n_embd", when="not moe"),
    Rule("ffn_down.weight", "n_embd, n_ff", when="not moe"),
) + FFN_MOE + (
    Rule("exp_probs_b.bias", "n_expert", when="moe"),
    Rule("ffn_gate_shexp.weight", "n_ff_exp * n_expert_shared, n_embd",
         when="moe and n_expert_shared > 0"),
    Rule("ffn_up_shexp.weight", "n_ff_exp * n_expert_shared, n_embd",
         when="moe and n_expert_shared > 0"),
    Rule("ffn_down_shexp.weight", "n_embd, n_ff_exp * n_expert_shared",
         when="moe and n_expert_shared > 0"),
)
# ERNIE's converter writes expert_shared_feed_forward_length as intermediate_size // kv
# heads, which need not be the shared MLP's width: that is taken from the tensors (n_ff_sh)
ERNIE_SHARED = (
    Rule("exp_probs_b.bias", "n_expert", OPTIONAL, when="moe"),
    Rule("ffn_gate_shexp.weight", "n_ff_sh, n_embd", OPTIONAL, when="moe"),
    Rule("ffn_up_shexp.weight", "n_ff_sh, n_embd", "ffn_gate_shexp.weight", when="moe"),
    Rule("ffn_down_shexp.weight", "n_embd, n_ff_sh", "ffn_gate_shexp.weight", when="moe"),
)

# arch -> (global rules, per-layer rules). "mixtral" is `llama` with experts.
ARCH_RULES: dict[str, tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {
    "llama": (GLOBAL + (Rule("rope_freqs.weight", "n_rot // 2", OPTIONAL),),
              _linear_biases(ATTN + FFN_DENSE)),
    "mixtral": (GLOBAL, _linear_biases(ATTN + FFN_DENSE + FFN_MOE)),
    "qwen2": (GLOBAL, _linear_biases(ATTN + FFN_DENSE)),
    "qwen3": (GLOBAL, _linear_biases(ATTN + QK_NORM_PER_HEAD + FFN_DENSE)),
    "gemma3": (GLOBAL, _linear_biases(
        ATTN + QK_NORM_PER_HEAD + FFN_DENSE
        + (Rule("post_attention_norm.weight", "n_embd"), Rule("post_ffw_norm.weight", "n_embd")))),
    "qwen2moe": (GLOBAL, _linear_biases(ATTN + FFN_DENSE + FFN_MOE + QWEN2MOE_SHARED)),
    "qwen3moe": (GLOBAL, _linear_biases(ATTN + QK_NORM_PER_HEAD + FFN_DENSE + FFN_MOE)),
    "olmoe": (GLOBAL, _linear_biases(ATTN + QK_NORM_ALL_HEADS + FFN_DENSE + FFN_MOE)),
    "deepseek2": (GLOBAL, _linear_biases(MLA + FFN_DENSE + FFN_MOE + DEEPSEEK2_SHARED)),
    "glm4moe": (GLOBAL, _linear_biases(GLM4MOE_LAYER)),
    "ernie4_5-moe": (GLOBAL, _linear_biases(ATTN + FFN_DENSE + FFN_MOE + ERNIE_SHARED)),
}

# gpt-oss: every layer is MoE (biased router and experts) behind post_attention_norm, no
# ffn_norm; attention sinks; even layers slide (attention.sliding_window).
MOE_ARCHS += ("gpt-oss",)
PARAMS += (
    Param("sliding_window", "attention.sliding_window", lo=0, archs=("gpt-oss",)),
    Param("rope_base_local", "rope.freq_base_swa", "float", lo=1, lo_open=True,
          archs=("gpt-oss",)),
)
GPT_OSS = (
    Rule("attn_sinks.weight", "n_head"),
    Rule("post_attention_norm.weight", "n_embd"),
    Rule("ffn_gate_inp.weight", "n_expert, n_embd"),
    Rule("ffn_gate_inp.bias", "n_expert"),
    Rule("ffn_gate_exps.weight", "n_expert, n_ff_exp, n_embd"),
    Rule("ffn_up_exps.weight", "n_expert, n_ff_exp, n_embd"),
    Rule("ffn_down_exps.weight", "n_expert, n_embd, n_ff_exp"),
    Rule("ffn_gate_exps.bias", "n_expert, n_ff_exp"),
    Rule("ffn_up_exps.bias", "n_expert, n_ff_exp"),
    Rule("ffn_down_exps.bias", "n_expert, n_embd"),
)
ARCH_RULES["gpt-oss"] = (GLOBAL, _linear_biases(ATTN) + GPT_OSS)

# granitemoe: the Llama layout with experts (GraniteMoeShared: + an ungated shared expert),
# and Granite's multipliers. A dense granitemoe file (no experts) is refused here.
MOE_ARCHS += ("granitemoe", "lfm2moe")
PARAMS += (
    # attention.scale multiplies q.k like the rope factors above: keep it below 16
    Param("attention_scale", "attention.scale", "float", lo=0, hi=16, archs=("granitemoe",)),
    Param("embedding_scale", "embedding_scale", "float", lo=0, hi=1e4, archs=("granitemoe",)),
    Param("residual_scale", "residual_scale", "float", lo=0, hi=1e3, archs=("granitemoe",)),
    Param("logit_scale", "logit_scale", "float", lo=0, hi=1e6, archs=("granitemoe",)),
)
GRANITE_SHARED = (
    Rule("ffn_gate_shexp.weight", "n_ff_shexp, n_embd", OPTIONAL, when="moe"),
    Rule("ffn_up_shexp.weight", "n_ff_shexp, n_embd", "ffn_gate_shexp.weight", when="moe"),
    Rule("ffn_down_shexp.weight", "n_embd, n_ff_shexp", "ffn_gate_shexp.weight", when="moe"),
)
ARCH_RULES["granitemoe"] = (GLOBAL + (Rule("rope_freqs.weight", "n_rot // 2", OPTIONAL),),
                            _linear_biases(ATTN + FFN_DENSE + FFN_MOE + GRANITE_SHARED))

# lfm2moe: per layer either attention (kv_heads[i] > 0) or a short convolution; the final
# norm is token_embd_norm; routed layers carry the selection bias exp_probs_b.
KV_PER_LAYER_ARCHS = ("lfm2moe",)  # attention.head_count_kv is a per-layer list (see read)
PARAMS += (
    Param("conv_kernel", "shortconv.l_cache", lo=2, hi=1 << 16, default=3, archs=("lfm2moe",)),
    Param("expert_gating", "expert_gating_func", lo=1, hi=2, default=2, archs=("lfm2moe",)),
    Param("n_dense_lead", "leading_dense_block_count", lo=0, default=0, archs=("lfm2moe",)),
)
_LFM2_ATTN = tuple(Rule(r.name, r.shape, r.need, "kv_heads[i] > 0")
                   for r in ATTN[1:] + QK_NORM_PER_HEAD)  # attn_norm: every layer has it
LFM2_CONV = (
    Rule("shortconv.conv.weight", "n_embd, conv_kernel", when="kv_heads[i] == 0"),
    Rule("shortconv.in_proj.weight", "3 * n_embd, n_embd", when="kv_heads[i] == 0"),
    Rule("shortconv.out_proj.weight", "n_embd, n_embd", when="kv_heads[i] == 0"),
)
ARCH_RULES["lfm2moe"] = (
    (Rule("token_embd.weight", "n_vocab, n_embd"), Rule("token_embd_norm.weight", "n_embd"),
     Rule("output.weight", "n_vocab, n_embd", OPTIONAL)),
    _linear_biases(ATTN[:1] + _LFM2_ATTN + LFM2_CONV + FFN_DENSE + FFN_MOE
                   + (Rule("exp_probs_b.bias", "n_expert", OPTIONAL, when="moe"),)))

# For a shape mismatch, name the metadata keys behind the first wrong dimension.
_SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _eval(expr: str, ns: dict[str, Any]) -> Any:
    # Our own constant formulas from the tables above, over plain ints: nothing else is reachable.
    return eval(expr, {"__builtins__": {}}, ns)  # noqa: S307


# ----------------------------------------------------------------------------- the check

def validate_model_file(gf: GGUFFile, n_ctx: int | None = None) -> dict[str, Any]:
    """Refuse (GGUFError, one line) a file whose hyperparameters are out of range, contradict
    each other or contradict its tensors' shapes; refuse (ModelTooLargeError) a KV cache for
    `n_ctx` positions (None: the engine's default) larger than this machine's memory.

    Reads only the header (metadata and tensor directory). Returns the hyperparameter symbols
    the shapes were checked against (for tests and messages)."""
    c = _Checker(gf)
    arch = c.arch
    if arch not in ARCH_RULES:
        return {}  # load_model reports unsupported architectures itself
    for p in PARAMS:
        if not p.archs or arch in p.archs:
            c.read(p)
    v = c.values
    moe_arch = arch in MOE_ARCHS or (arch == "llama" and v["n_expert"] > 0)
    table = "mixtral" if arch == "llama" and moe_arch else arch
    _check_consistency(c, moe_arch)
    _check_blocks(c)
    _check_tensors(c, table)
    _check_kv_cache(c, n_ctx)
    return v


def _check_consistency(c: _Checker, moe_arch: bool) -> None:
    """Derive head geometry, vocab and expert sizes the way the models do, and cross-check."""
    v, fail, show = c.values, c.fail, c.show
    arch = c.arch
    if "n_ff" not in v and not moe_arch:
        raise fail(f"metadata key '{arch}.feed_forward_length' is missing")
    v.setdefault("n_ff", 0)
    if "head_dim" not in v:
        if v["n_embd"] % v["n_head"]:
            raise fail(f"{show('n_head')} does not divide {show('n_embd')}")
        v["head_dim"] = v["n_embd"] // v["n_head"]
        c.keys["head_dim"] = "head_dim (embedding_length / head_count)"
    if "n_head_kv" not in v:
        v["n_head_kv"] = v["n_head"]
    elif v["n_head"] % v["n_head_kv"]:
        raise fail(f"{show('n_head_kv')} does not divide {show('n_head')}")
    v.setdefault("head_dim_v", v["head_dim"])
    if "n_rot" not in v:
        v["n_rot"] = v["head_dim"]
        c.keys["n_rot"] = c.key_of("head_dim")  # rope covers the whole head
    if arch == "deepseek2":
        v["qk_head"] = v.get("qk_head_mla") or v["head_dim"]
        v["v_head"] = v.get("v_head_mla") or v["head_dim_v"]
        v["qk_nope"] = v["qk_head"] - v["n_rot"]
        c.keys["qk_head"] = c.keys.get("qk_head_mla", c.key_of("head_dim"))
        c.keys["v_head"] = c.keys.get("v_head_mla", c.key_of("head_dim_v"))
        if v["n_rot"] >= v["qk_head"]:
            raise fail(f"{show('n_rot')} leaves no non-rotary part of the "
                       f"{v['qk_head']}-wide query/key heads ({c.key_of('qk_head')})")
    elif v["n_rot"] > v["head_dim"]:
        raise fail(f"{show('n_rot')} is larger than the head size {v['head_dim']} "
                   f"({c.key_of('head_dim')})")
    if v["n_rot"] % 2:
        raise fail(f"{show('n_rot')} is odd: rotary dimensions come in pairs")

    # the vocabulary: token_embd must have one row per token (llama.cpp: n_vocab = n_tokens)
    tokens = c.gf.metadata.get("tokenizer.ggml.tokens")
    if "n_vocab_key" in v:
        v["n_vocab"] = v["n_vocab_key"]
        c.keys["n_vocab"] = c.keys["n_vocab_key"]
        if isinstance(tokens, (list, StringArray)) and tokens and len(tokens) != v["n_vocab"]:
            raise fail(f"{show('n_vocab')} but tokenizer.ggml.tokens lists {len(tokens)} tokens")
    elif isinstance(tokens, (list, StringArray)) and tokens:
        v["n_vocab"] = len(tokens)
        c.keys["n_vocab"] = "the vocabulary size (tokenizer.ggml.tokens)"

    # experts
    if arch in MOE_ARCHS and v["n_expert"] < 1:
        raise fail(f"{show('n_expert')}, expected at least 1 for a {arch} model")
    if v["n_expert"] > 0 and not 1 <= v["n_expert_used"] <= v["n_expert"]:
        raise fail(f"{c.key_of('n_expert_used')} = {v['n_expert_used']}, expected 1 to "
                   f"{show('n_expert')}")
    if "n_ff_exp" not in v and arch == "llama":
        v["n_ff_exp"] = v["n_ff"]  # Mixtral's experts are feed_forward_length wide
        c.keys["n_ff_exp"] = c.key_of("n_ff")
    if arch == "deepseek2":
        if v["n_dense_lead"] > v["n_layer"]:
            raise fail(f"{show('n_dense_lead')} is more than {show('n_layer')}")
        if v["n_groups"] > 1:
            if v["n_expert"] % v["n_groups"] or v["n_expert"] // v["n_groups"] < 2:
                raise fail(f"{show('n_groups')} does not split {show('n_expert')} into groups "
                           f"of at least 2")
            if not 1 <= v["n_groups_used"] <= v["n_groups"]:
                raise fail(f"{c.key_of('n_groups_used')} = {v['n_groups_used']}, expected 1 "
                           f"to {show('n_groups')}")
    if arch == "glm4moe":
        if v["n_nextn"] >= v["n_layer"]:
            raise fail(f"{show('n_nextn')} leaves no trunk of {show('n_layer')}")
        if v["n_groups"] > 1 and (v["n_expert"] % v["n_groups"] or v["n_expert"] // v["n_groups"] < 2
                                  or not 1 <= v["n_groups_used"] <= v["n_groups"]):
            raise fail(f"{show('n_groups')} (using {v['n_groups_used']}) does not split "
                       f"{show('n_expert')} into groups of at least 2")
    if arch == "gemma3":
        key = f"{arch}.attention.sliding_window_pattern"
        pattern = c.gf.metadata.get(key)
        if isinstance(pattern, (np.ndarray, list)) and len(pattern) != v["n_layer"]:
            raise fail(f"{key} has {len(pattern)} entries, expected one per block "
                       f"({show('n_layer')})")
        if pattern is not None and not isinstance(pattern, (np.ndarray, list)) and (
                isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 0):
            raise fail(f"{key} = {_fmt(pattern)}, expected an integer >= 0")
    if "rope_orig_ctx" not in v:
        v["rope_orig_ctx"] = v["n_ctx_train"]


_BLOCK_RE = re.compile(r"blk\.(\d+)\.")


def _check_blocks(c: _Checker) -> None:
    """block_count must equal the number of `blk.N` groups, numbered 0..n-1."""
    found = {int(m.group(1)) for t in c.gf.tensors if (m := _BLOCK_RE.match(t.name))}
    n = c.values["n_layer"]
    nextn = c.values.get("n_nextn", 0)  # glm4moe: trailing NextN blocks may be left out
    if nextn and 0 < n - nextn == len(found) and max(found) == n - nextn - 1:
        return
    if len(found) != n or (found and max(found) != n - 1):  # no range(n): n may be 2**32 - 1
        if not found:
            has = "no blk.N tensors"
        elif found == set(range(len(found))):
            has = f"tensors for {len(found)} blocks (blk.0 .. blk.{len(found) - 1})"
        else:
            missing = sorted(set(range(max(found) + 1)) - found)
            has = f"blocks {min(found)} .. {max(found)} with blk.{missing[0]} missing"
        raise c.fail(f"{c.show('n_layer')} but the file has {has}")


_EXPERT_TENSORS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")


def _check_tensors(c: _Checker, table: str) -> None:
    gf, v = c.gf, c.values
    global_rules, layer_rules = ARCH_RULES[table]
    split_kv_b = gf.has_tensor("blk.0.attn_k_b.weight")
    for r in global_rules:
        _check_rule(c, r, r.name, dict(v), lambda n: gf.has_tensor(n))
    for i in range(v["n_layer"] - v.get("n_nextn", 0)):  # NextN blocks are never loaded
        p = f"blk.{i}."
        if table in ("deepseek2", "lfm2moe"):  # llama.cpp: MoE from leading_dense_block_count
            moe = v["n_expert"] > 0 and i >= v["n_dense_lead"]
        elif table in ("glm4moe", "ernie4_5-moe"):  # which layers are MoE is in the metadata
            moe = i >= v["n_dense_lead"] and (i + 1) % v.get("moe_step", 1) == 0
        else:  # a layer with a router or expert tensors is MoE; its router is then required
            moe = table in ("mixtral",) + MOE_ARCHS and any(
                gf.has_tensor(p + t) for t in ("ffn_gate_inp.weight",) + _EXPERT_TENSORS)
        stray = next((p + t for t in _EXPERT_TENSORS if not moe and gf.has_tensor(p + t)), None)
        if stray is not None:
            stated = (c.show("n_expert") if "n_expert" in c.keys
                      else f"{c.arch}.expert_count is absent")
            raise c.fail(f"{stated} but {stray} holds {gf.tensor(stray).shape[0]} experts")
        ns = dict(v, i=i, moe=moe, split_kv_b=split_kv_b)
        for r in layer_rules:
            _check_rule(c, r, p + r.name, ns, gf.has_tensor, p)


def _check_rule(c: _Checker, r: Rule, name: str, ns: dict[str, Any],
                has: Callable[[str], bool], prefix: str = "") -> None:
    if r.when and not _eval(r.when, ns):
        return
    if not has(name):
        required = r.need == REQUIRED or (r.need != OPTIONAL and has(prefix + r.need))
        if required:
            raise c.fail(f"tensor {name} is missing (required by the {c.arch} architecture"
                         f"{'' if r.need == REQUIRED else ' next to ' + prefix + r.need})")
        return
    got = c.gf.tensor(name).shape
    formulas = [f.strip() for f in r.shape.split(",")]
    # ggml pads every shape with 1s (llama.cpp accepts a [1, n] tensor for an [n] rule)
    while len(got) > len(formulas) and got[0] == 1:
        got = got[1:]
    # A size no key states (e.g. a file without expert_feed_forward_length) is taken from the
    # first tensor that carries it; every later tensor must then agree.
    if len(got) == len(formulas):
        for f, d in zip(formulas, got):
            if _SYMBOL_RE.fullmatch(f) and f not in ns:
                ns[f] = c.values[f] = d
                c.keys[f] = f"{f} (from {name})"
    missing = [s for f in formulas for s in _SYMBOL_RE.findall(f) if s not in ns]
    if missing:  # a size neither a key nor an earlier tensor gives: nothing to check against
        return
    want = tuple(int(_eval(f, ns)) for f in formulas)
    if tuple(got) != want:
        msg = (f"tensor {name} has shape {list(got)}, expected [{', '.join(formulas)}] = "
               f"{list(want)}")
        bad = next((f for f, g, w in zip(formulas, got, want) if g != w), None)
        if bad is not None:
            keys = [c.show(s) for s in dict.fromkeys(_SYMBOL_RE.findall(bad)) if s in c.keys]
            if keys:
                msg += f" ({', '.join(keys)})"
        raise c.fail(msg)


def _check_kv_cache(c: _Checker, n_ctx: int | None) -> None:
    """The cache is preallocated for the whole context: size it before torch is asked to."""
    import psutil

    from engine.models.base import DEFAULT_N_CTX

    v = c.values
    if n_ctx is not None and n_ctx < 0:
        raise LLMLensError(f"the context size must be positive, got {n_ctx}")
    ctx = n_ctx or min(v["n_ctx_train"], DEFAULT_N_CTX)
    if c.arch == "deepseek2":  # MLA caches one latent + one rope key per token per layer
        per_token = v["n_layer"] * (v["kv_lora"] + v["n_rot"]) * 4
        what = f"{v['n_layer']} layers x ({v['kv_lora']} + {v['n_rot']}) values"
    else:
        per_token = v["n_layer"] * v["n_head_kv"] * (v["head_dim"] + v["head_dim_v"]) * 4
        what = (f"{v['n_layer']} layers x {v['n_head_kv']} kv heads x "
                f"({v['head_dim']} + {v['head_dim_v']}) values")
    total = psutil.virtual_memory().total
    if per_token * ctx > total:
        raise ModelTooLargeError(
            f"{c.name}: a KV cache of {ctx} tokens needs {per_token * ctx / 2**30:.1f} GiB "
            f"({what} x 4 bytes per token), more than this machine's "
            f"{total / 2**30:.1f} GiB of memory")
