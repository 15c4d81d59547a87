"""Pre-tokenizer regexes for byte-level BPE vocabularies, keyed by `tokenizer.ggml.pre`.

Transcribed from llama.cpp's `src/llama-vocab.cpp` (`llm_tokenizer_bpe` constructor and the
`tokenizer_pre` name table in `llama_vocab::impl::load`), at the revision vendored in
llama-cpp-python 0.3.36. llama.cpp applies the regexes of a list one after another, each one
splitting every piece left by the previous ones into matches and the gaps between them; that is
`tokenizers.pre_tokenizers.Split(regex, "isolated")` chained in a `Sequence`.

Pre-tokenizers llama.cpp implements with hand-written code (kimi-k2, afmoe digit grouping) or a
zero-width regex (superbpe) are not listed: such files fall back to `default` with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3 = (
    r"\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _CONTRACTIONS + "?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _CONTRACTIONS + "?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"

# llama.cpp pre-tokenizer type -> regex list.
REGEXES: dict[str, tuple[str, ...]] = {
    "DEFAULT": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "LLAMA3": (_LLAMA3,),
    "JAIS2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
              r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",),
    "DEEPSEEK_LLM": (
        "[\r\n]",
        # Escaped: editors and tools may NFC-normalise characters such as U+2126 OHM SIGN.
        "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
        "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3"
        "-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd"
        "\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-"
        "\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-"
        "\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-"
        "\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126"
        "\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00"
        "-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f"
        "\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-"
        "\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-"
        "\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
        r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
        r"\s+$",
        "[一-龥ࠀ-一가-\ud7ff]+",
        r"\p{N}+",
    ),
    "DEEPSEEK3_LLM": _DEEPSEEK3,
    "SPARK2_5": (
        r"\p{N}{1,3}",
        "[一-龥\u3040-ゟ゠-ヿ]+",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
        r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
        r"\p{N}",
    ),
    "YOUTU": (
        "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\u3040-ゟ゠-ヿ]+",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
        + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "DEEPSEEK_CODER": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-\ud7ff]+", r"\p{N}"),
    "FALCON": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "STARCODER": (r"\p{N}", _GPT2),
    "GPT2": (_GPT2,),
    "QWEN2": (_QWEN2,),
    "QWEN35": (_QWEN35,),
    "BLOOM": (_BLOOM,),
    "VIKING": (_BLOOM, r"\p{N}"),
    "TEKKEN": (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "CHAMELEON": ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                  r"([\t\n]|    |  )", r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2),
    "GPT4O": (_GPT4O,),
    "TINY_AYA": (
        r"\d{1,3}(?=(?:\d{3})*\b)",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
        + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "BAILINGMOE": (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    "SEED_CODER": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "UFAKZEKA": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+",),
    "LAGUNA": (r"[^\n]+|[\n]+", _QWEN2),
    "EXAONE_MOE": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    "GEMMA4": (r"[^\n]+|[\n]+",),
    "MINICPM5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "WHITESPACE": (r"\S+",),
}


@dataclass(frozen=True)
class PreSpec:
    """How llama.cpp pre-tokenizes one `tokenizer.ggml.pre` name."""

    kind: str                       # key into REGEXES
    ignore_merges: bool = False     # a whole piece found in the vocab is taken as-is
    byte_encode: bool = True        # GPT-2 byte-to-unicode mapping (False: raw UTF-8 + <0xNN>)
    escape_whitespace: bool = False  # " " -> "▁" before splitting (SPM-style BPE)


_S = PreSpec
PRE_NAMES: dict[str, PreSpec] = {
    "default": _S("DEFAULT"),
    **{n: _S("LLAMA3", ignore_merges=True) for n in (
        "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
        "jina-v5-nano")},
    "minicpm5": _S("MINICPM5", ignore_merges=True),
    "deepseek-llm": _S("DEEPSEEK_LLM"),
    "deepseek-coder": _S("DEEPSEEK_CODER"),
    "deepseek-v3": _S("DEEPSEEK3_LLM"),
    "hunyuan-dense": _S("DEEPSEEK3_LLM"),
    "hy_v4": _S("DEEPSEEK3_LLM"),
    "joyai-llm": _S("DEEPSEEK3_LLM"),
    "spark2_5": _S("SPARK2_5"),
    "youtu": _S("YOUTU", ignore_merges=True),
    "falcon": _S("FALCON"),
    "mpt": _S("GPT2"),
    "starcoder": _S("STARCODER"),
    **{n: _S("GPT2") for n in (
        "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
        "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe",
        "olmo", "jais", "exaone4", "trillion", "granite-docling")},
    "jais-2": _S("JAIS2"),
    "gemma4": _S("GEMMA4", byte_encode=False, escape_whitespace=True),
    "granite-embed-multi-311m": _S("GEMMA4", byte_encode=False, escape_whitespace=True),
    "sarvam-moe": _S("GEMMA4", byte_encode=False, escape_whitespace=True),
    "whitespace": _S("WHITESPACE", byte_encode=False),
    **{n: _S("STARCODER") for n in (
        "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2")},
    **{n: _S("QWEN2") for n in (
        "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan",
        "grok-2", "solar-open")},
    "qwen35": _S("QWEN35"),
    "dbrx": _S("LLAMA3"),
    "smaug-bpe": _S("LLAMA3"),
    "chatglm-bpe": _S("LLAMA3"),
    "glm4": _S("LLAMA3", ignore_merges=True),
    "glm5": _S("LLAMA3", ignore_merges=True),
    "poro-chat": _S("BLOOM"),
    "bloom": _S("BLOOM"),
    "gpt3-finnish": _S("BLOOM"),
    "viking": _S("VIKING"),
    "tekken": _S("TEKKEN", ignore_merges=True),
    "chameleon": _S("CHAMELEON"),
    **{n: _S("GPT4O") for n in ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2")},
    **{n: _S("TINY_AYA") for n in ("tiny_aya", "cohere2moe")},
    **{n: _S("BAILINGMOE") for n in ("bailingmoe", "bailingmoe2", "llada-moe")},
    "seed-coder": _S("SEED_CODER"),
    "ufakzeka": _S("UFAKZEKA"),
    "laguna": _S("LAGUNA"),
    "exaone-moe": _S("EXAONE_MOE"),
}


def pre_spec(name: str) -> PreSpec | None:
    """The spec for a `tokenizer.ggml.pre` name, or None when unknown ("" means default)."""
    return PRE_NAMES.get(name or "default")
