"""`tokenizers` (Hugging Face, Rust) models that reproduce llama.cpp's text-fragment encoders.

Each builder returns a `tokenizers.Tokenizer` with no added tokens: special tokens are split
out beforehand by `GGUFTokenizer._partition`, exactly as llama.cpp does, so the Rust side only
ever sees plain text.

- SPM (`tokenizer.ggml.model = llama`: Llama 2, Gemma 1-3, Phi-3, ...). llama.cpp merges the
  adjacent pair whose concatenation is the highest-scoring vocabulary token, leftmost first,
  until nothing merges; characters left without a token become `<0xNN>` byte tokens. That is a
  BPE whose merge list is every split (a, b) of every token t with a and b also tokens, ranked
  by t's score (what `transformers`' SentencePiece converter builds), with byte fallback.
- Byte-level BPE (`gpt2`): the GGUF merges as-is, the regex pre-tokenizer that
  `tokenizer.ggml.pre` names (see `pretokenize.py`), then GPT-2's byte-to-unicode mapping.
- SPM-style BPE (`gemma4` and friends): GGUF merges over raw UTF-8 with `▁` for spaces,
  split on newlines only, byte fallback to `<0xNN>`.
- WordPiece (`bert`): BERT normalizer and pre-tokenizer, greedy longest-match pieces.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from engine.default_model import cache_dir
from engine.tokenizer.pretokenize import REGEXES, PreSpec
from engine.tokenizer.vocab import Vocab

log = logging.getLogger(__name__)
_CACHE_MIN_VOCAB = 50_000  # smaller vocabularies take < 0.2 s: not worth a file


def spm_merge_ids(tokens: list[str], scores: np.ndarray, token_to_id: dict[str, int]) -> np.ndarray:
    """Every (a, b) with a, b and a+b in the vocabulary, best-scoring a+b first: int32 [M, 2]."""
    # One flat comprehension: it runs ~2M times for a 262k vocabulary (about 1 s).
    found = [(i, token_to_id[t[:k]], token_to_id[t[k:]]) for i, t in enumerate(tokens)
             for k in range(1, len(t)) if t[:k] in token_to_id and t[k:] in token_to_id]
    if not found:
        return np.zeros((0, 2), np.int32)
    arr = np.asarray(found, dtype=np.int64)
    # Stable sort: equal scores keep vocabulary order (llama.cpp breaks such ties by position,
    # which no static ranking can mirror; real SPM vocabularies have distinct scores).
    order = np.argsort(-scores[arr[:, 0]], kind="stable")
    return arr[order, 1:].astype(np.int32)


def cached_spm_merge_ids(vocab: Vocab) -> np.ndarray:
    """`spm_merge_ids`, memoised on disk by a hash of tokens and scores (1 s -> 10 ms for
    Gemma's 262k vocabulary). Any cache problem just means computing them again."""
    if vocab.n_vocab < _CACHE_MIN_VOCAB:
        return spm_merge_ids(vocab.tokens, vocab.scores, vocab.token_to_id)
    digest = hashlib.sha256("\0".join(vocab.tokens).encode("utf-8", "surrogatepass"))
    digest.update(vocab.scores.astype("<f4").tobytes())
    path = cache_dir() / "spm-merges" / f"{digest.hexdigest()[:32]}.npy"
    try:
        arr = np.load(path, allow_pickle=False)
        if arr.ndim == 2 and arr.shape[1] == 2 and (arr.size == 0 or arr.max() < vocab.n_vocab):
            return arr.astype(np.int32, copy=False)
    except (OSError, ValueError):
        pass
    arr = spm_merge_ids(vocab.tokens, vocab.scores, vocab.token_to_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not cache SPM merges in %s: %s", path, exc)
    return arr


def build_spm(vocab: Vocab) -> Tokenizer:
    ids = cached_spm_merge_ids(vocab)
    toks = vocab.tokens
    merges = [(toks[a], toks[b]) for a, b in zip(ids[:, 0].tolist(), ids[:, 1].tolist())]
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    model = models.BPE(vocab=vocab.token_to_id, merges=merges, unk_token=unk,
                       byte_fallback=True, fuse_unk=False)
    return Tokenizer(model)


def _split_merges(merges: Sequence[str]) -> list[tuple[str, str]]:
    """GGUF "a b" merge strings -> pairs; the first occurrence of a pair keeps its rank."""
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for m in merges:
        pos = m.find(" ", 1)  # llama.cpp: word.find(' ', 1), so a merge may start with ' '
        pair = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def build_bpe(vocab: Vocab, spec: PreSpec) -> Tokenizer:
    merges = _split_merges(vocab.merges or [])
    if spec.byte_encode:
        model = models.BPE(vocab=vocab.token_to_id, merges=merges,
                           ignore_merges=spec.ignore_merges)
    else:
        model = models.BPE(vocab=vocab.token_to_id, merges=merges, byte_fallback=True,
                           ignore_merges=spec.ignore_merges)
    tok = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in REGEXES[spec.kind]]
    if spec.byte_encode:
        splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    return tok


def build_wpm(vocab: Vocab, lowercase: bool) -> Tokenizer:
    # llama.cpp's converter stores WordPiece as "phantom space" pieces: "▁word" starts a word,
    # "ing" continues one ("##ing" in BERT). Map back to BERT's convention.
    wp: dict[str, int] = {}
    for i, t in enumerate(vocab.tokens):
        if t.startswith("[") and t.endswith("]"):
            wp[t] = i
        elif t.startswith("\u2581"):
            wp[t[1:]] = i
        else:
            wp["##" + t] = i
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else "[UNK]"
    tok = Tokenizer(models.WordPiece(vocab=wp, unk_token=unk, max_input_chars_per_word=1 << 30))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok
