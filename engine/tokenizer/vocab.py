"""The vocabulary of a GGUF file as llama.cpp reads it (`llama_vocab::impl::load`).

Everything here comes from `tokenizer.ggml.*` metadata: token strings, scores, token types
(turned into llama.cpp's attribute bits), special ids, add-BOS/EOS flags and the per-model
fix-ups llama.cpp applies by token name (end-of-generation tokens, control-looking tokens that
were stored as normal, Phi-3's right-stripping specials). Keeping it apart from the encoders
means the tokenizer backends only see plain lists and flags.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import GGUFError, LLMLensError
from engine.gguf.reader import StringArray


class Attr(enum.IntFlag):
    """llama.cpp's `llama_token_attr` bits."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# GGUF `tokenizer.ggml.token_type` values -> attribute.
_TYPE_TO_ATTR = {
    0: Attr.UNDEFINED, 1: Attr.NORMAL, 2: Attr.UNKNOWN, 3: Attr.CONTROL,
    4: Attr.USER_DEFINED, 5: Attr.UNUSED, 6: Attr.BYTE,
}

# Token texts llama.cpp treats as end-of-generation (llama-vocab.cpp, "special_eog_ids").
EOG_NAMES = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)
# Texts auto-detected as EOT/EOM/FIM tokens; each is forced to CONTROL when found.
_EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_FIM_EOG_NAMES = {  # FIM pad / repo / file-separator tokens also end generation
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_FIM_OTHER_NAMES = (
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
    "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>",
    "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
    "<|middle|>",
)

# tokenizer.ggml.model -> llama.cpp vocab type.
_MODEL_TYPES = {"llama": "spm", "gpt2": "bpe", "gemma4": "bpe", "bert": "wpm"}
_UNSUPPORTED_MODELS = {"t5": "UGM (T5)", "rwkv": "RWKV", "plamo2": "PLaMo-2",
                       "hybriddna": "HybridDNA", "whitespace": "whitespace", "test": "test"}


@dataclass
class Vocab:
    model: str                      # tokenizer.ggml.model
    type: str                       # "spm" | "bpe" | "wpm"
    pre: str                        # tokenizer.ggml.pre ("" when absent)
    tokens: list[str]
    scores: np.ndarray              # float32 [n_vocab]
    attrs: np.ndarray               # int32 [n_vocab], Attr bits
    merges: Sequence[str] | None  # a GGUF file gives a StringArray
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    sep_id: int | None
    pad_id: int | None
    eot_id: int | None
    eom_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: set[int] = field(default_factory=set)
    token_to_id: dict[str, int] = field(default_factory=dict)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def has_attr(self, token_id: int, attr: Attr) -> bool:
        return bool(int(self.attrs[token_id]) & attr)


# Ids that build prompts and end generation: one outside the vocabulary is an error. llama.cpp
# only warns ("bad special token") and keeps the default, which we still do for unk/sep/pad:
# real files carry out-of-range padding ids, and nothing here uses those.
_STRICT_IDS = ("bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id")


def _get_id(md: dict[str, Any], key: str, default: int | None, n: int) -> int | None:
    value = md.get(f"tokenizer.ggml.{key}")
    if value is None:
        return default if default is not None and 0 <= default < n else None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GGUFError(f"tokenizer.ggml.{key} = {value!r} is not a token id")
    value = int(value)
    if not 0 <= value < n:
        if key in _STRICT_IDS:
            raise GGUFError(f"tokenizer.ggml.{key} = {value} is outside the vocabulary "
                            f"(ids 0 to {n - 1})")
        return default if default is not None and 0 <= default < n else None
    return value


def read_vocab(md: dict[str, Any]) -> Vocab:
    """Build a `Vocab` from GGUF metadata; raises `LLMLensError` for missing/unsupported data."""
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise GGUFError("file has no tokenizer (tokenizer.ggml.model is missing)")
    if model in ("no_vocab", "none"):
        raise LLMLensError("this file has no vocabulary (tokenizer.ggml.model = 'none')")
    if model in _UNSUPPORTED_MODELS:
        raise LLMLensError(f"tokenizer model {model!r} ({_UNSUPPORTED_MODELS[model]}) is not "
                           f"supported; supported: {', '.join(sorted(_MODEL_TYPES))}")
    if model not in _MODEL_TYPES:
        raise LLMLensError(f"unknown tokenizer model {model!r}; supported: "
                           f"{', '.join(sorted(_MODEL_TYPES))}")
    vtype = _MODEL_TYPES[model]
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, (list, StringArray)) or not tokens:
        raise GGUFError("tokenizer.ggml.tokens is missing or empty")
    n = len(tokens)
    # llama.cpp renames empty tokens so that text -> id stays a bijection.
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]

    scores = md.get("tokenizer.ggml.scores")
    scores = (np.zeros(n, np.float32) if scores is None
              else np.asarray(scores, dtype=np.float32)[:n])
    types = md.get("tokenizer.ggml.token_type")
    if types is None:
        attrs = np.full(n, int(Attr.NORMAL), np.int32)
    else:
        types = np.asarray(types)[:n].astype(np.int64)
        lut = np.zeros(8, np.int32)
        for t, a in _TYPE_TO_ATTR.items():
            lut[t] = int(a)
        attrs = lut[np.clip(types, 0, 7)]
        attrs[types > 6] = int(Attr.UNDEFINED)
    merges = md.get("tokenizer.ggml.merges")
    if vtype == "bpe" and merges is None:
        raise GGUFError("BPE vocabulary without tokenizer.ggml.merges")

    pre = str(md.get("tokenizer.ggml.pre", "") or "")
    if model == "gemma4":
        pre = "gemma4"

    # Per-type defaults, then the file's own keys (llama_vocab::impl::load).
    if vtype == "spm":
        defaults = dict(bos=1, eos=2, unk=0, sep=None, pad=None)
        add_bos, add_eos, add_space_prefix = True, False, True
    elif vtype == "wpm":
        defaults = dict(bos=101, eos=None, unk=100, sep=102, pad=0)
        add_bos, add_eos, add_space_prefix = True, False, False
    elif model == "gemma4":
        defaults = dict(bos=None, eos=None, unk=None, sep=None, pad=None)
        add_bos, add_eos, add_space_prefix = False, False, False
    else:
        defaults = dict(bos=11, eos=11, unk=None, sep=None, pad=None)
        add_bos, add_eos, add_space_prefix = False, False, False
        if pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                   "midm-2.0", "lfm2", "jina-v5-nano", "tekken", "chameleon"):
            add_bos = True
    if pre in ("chatglm-bpe", "glm4", "glm5"):
        defaults["bos"] = None
    add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", add_space_prefix))
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", add_eos))
    if pre == "gemma4":
        add_bos = True  # llama.cpp's Gemma 4 workaround (PR 21500)

    token_to_id = {t: i for i, t in enumerate(tokens)}
    vocab = Vocab(
        model=model, type=vtype, pre=pre, tokens=tokens, scores=scores, attrs=attrs,
        merges=merges,
        bos_id=_get_id(md, "bos_token_id", defaults["bos"], n),
        eos_id=_get_id(md, "eos_token_id", defaults["eos"], n),
        unk_id=_get_id(md, "unknown_token_id", defaults["unk"], n),
        sep_id=_get_id(md, "seperator_token_id", defaults["sep"], n),
        pad_id=_get_id(md, "padding_token_id", defaults["pad"], n),
        eot_id=_get_id(md, "eot_token_id", None, n),
        eom_id=_get_id(md, "eom_token_id", None, n),
        add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix,
        token_to_id=token_to_id,
    )
    _apply_name_fixups(vocab, md)
    return vocab


def _force_control(vocab: Vocab, token_id: int) -> None:
    vocab.attrs[token_id] |= int(Attr.CONTROL)


def _apply_name_fixups(vocab: Vocab, md: dict[str, Any]) -> None:
    """The by-name special-token detection of llama.cpp (its own TODO: 'based on their text')."""
    get = vocab.token_to_id.get
    if vocab.eot_id is None:
        # llama.cpp walks an unordered map and takes the first hit; any hit is acceptable.
        vocab.eot_id = next((get(n) for n in _EOT_NAMES if get(n) is not None), None)
    if vocab.eom_id is None:
        vocab.eom_id = get("<|eom_id|>")
    for tid in (vocab.eot_id, vocab.eom_id):
        if tid is not None:
            _force_control(vocab, tid)
    eog: set[int] = set()
    for names in _FIM_EOG_NAMES.values():
        tid = next((get(n) for n in names if get(n) is not None), None)
        if tid is not None:
            _force_control(vocab, tid)
            eog.add(tid)
    for name in _FIM_OTHER_NAMES:
        if (tid := get(name)) is not None:
            _force_control(vocab, tid)

    # Control tokens named "unused..." are unused.
    control = (vocab.attrs & int(Attr.CONTROL)) != 0
    for i in np.flatnonzero(control):
        if "unused" in vocab.tokens[i]:
            vocab.attrs[i] |= int(Attr.UNUSED)

    for name in EOG_NAMES:
        if (tid := get(name)) is not None:
            eog.add(tid)
            _force_control(vocab, tid)
    # gpt-oss: these are always rendered.
    for name in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if (tid := get(name)) is not None:
            vocab.attrs[tid] = int(Attr.USER_DEFINED)
    for tid in (vocab.eos_id, vocab.eot_id, vocab.eom_id):
        if tid is not None:
            eog.add(tid)
    texts = {vocab.tokens[t]: t for t in eog}
    # o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        eog.discard(texts["<|end|>"])
        vocab.attrs[texts["<|end|>"]] = int(Attr.USER_DEFINED)
    # Gemma 4 / PLaMo have an ordinary "</s>".
    if "</s>" in texts and ({"<|tool_response>", "<|plamo:eos|>"} & texts.keys()):
        eog.discard(texts["</s>"])
        vocab.attrs[texts["</s>"]] = int(Attr.NORMAL)
    vocab.eog_ids = eog

    # Per-model strip attributes (llama.cpp sets these by model/tokenizer/arch name).
    name = str(md.get("general.name", "") or "").lower()
    arch = str(md.get("general.architecture", "") or "")
    special = (vocab.attrs & int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)) != 0
    if (any(s in vocab.pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
            or any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3"))):
        if (tid := get("<mask>")) is not None:
            vocab.attrs[tid] |= int(Attr.LSTRIP)
    elif "phi-3" in name or "phi3" in name:
        vocab.attrs[special] |= int(Attr.RSTRIP)
        if (tid := get("</s>")) is not None:
            vocab.attrs[tid] |= int(Attr.RSTRIP)
        for t in ("<unk>", "<s>", "<|endoftext|>"):
            if (tid := get(t)) is not None:
                vocab.attrs[tid] &= ~int(Attr.RSTRIP)
    elif "modern-bert" in name:
        if (tid := get("[MASK]")) is not None:
            vocab.attrs[tid] |= int(Attr.LSTRIP)
