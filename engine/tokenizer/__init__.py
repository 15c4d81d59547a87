"""Tokenizers built from a GGUF file's vocabulary alone, matching llama.cpp token for token.

    tok = load_tokenizer(gf)                 # gf from engine.gguf.reader.open_gguf, or its metadata
    ids = tok.encode("Hello", add_special=True, parse_special=True)
    text = tok.decode(ids)
    dec = tok.stream_decoder(); dec.feed(id) -> "" until a UTF-8 character completes

Supported `tokenizer.ggml.model`s: `llama` (SentencePiece BPE: Llama 2, Gemma 1-3, Phi-3, ...),
`gpt2` (byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names; an unknown name
falls back to llama.cpp's `default` regexes with a warning), `gemma4` (SPM-style BPE) and
`bert` (WordPiece). Only `open_gguf` is needed: model weights are never read.

Layout: `vocab.py` reads metadata the way llama.cpp does (attributes, special ids, EOG set),
`pretokenize.py` holds llama.cpp's regex table, `backends.py` builds the Rust encoders,
`gguf_tokenizer.py` splits out special tokens and decodes.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from typing import Any

from engine.errors import GGUFError
from engine.tokenizer.backends import build_bpe, build_spm, build_wpm
from engine.tokenizer.gguf_tokenizer import GGUFTokenizer, StreamDecoder
from engine.tokenizer.pretokenize import PRE_NAMES, PreSpec, pre_spec
from engine.tokenizer.vocab import Attr, Vocab, read_vocab

__all__ = ["Attr", "GGUFTokenizer", "PRE_NAMES", "StreamDecoder", "Vocab", "load_tokenizer"]

log = logging.getLogger(__name__)


def load_tokenizer(gf_or_metadata: Any) -> GGUFTokenizer:
    """Build the tokenizer of a `GGUFFile` (or of its `metadata` dict)."""
    md = gf_or_metadata if isinstance(gf_or_metadata, dict) else gf_or_metadata.metadata
    # Building makes millions of small str/tuple objects and no cycles: without this the
    # cyclic GC rescans them over and over (about a third of the time for a 262k vocab).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(md)
    except GGUFError as exc:
        path = getattr(gf_or_metadata, "path", None)
        if path is None:
            raise
        raise type(exc)(f"{path.name}: {exc}") from None  # name the file, as the loader does
    finally:
        if gc_was_enabled:
            gc.enable()


def _load(md: dict[str, Any]) -> GGUFTokenizer:
    t0 = time.perf_counter()
    vocab = read_vocab(md)
    if vocab.type == "spm":
        backend = build_spm(vocab)
        tok = GGUFTokenizer(vocab, backend, escape_whitespace=True, byte_encode=False)
    elif vocab.type == "wpm":
        lowercase = bool(md.get("tokenizer.ggml.normalizer.lowercase", True))
        tok = GGUFTokenizer(vocab, build_wpm(vocab, lowercase), escape_whitespace=False,
                            byte_encode=False)
    else:
        spec = pre_spec(vocab.pre)
        if spec is None:
            msg = (f"unknown pre-tokenizer {vocab.pre!r} (tokenizer.ggml.pre); using llama.cpp's "
                   f"'default' regexes, so tokenization may differ from the model's own")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
            spec = PreSpec("DEFAULT")
        tok = GGUFTokenizer(vocab, build_bpe(vocab, spec), escape_whitespace=spec.escape_whitespace,
                            byte_encode=spec.byte_encode)
    log.debug("tokenizer (%s, %d tokens) built in %.2f s", vocab.model, vocab.n_vocab,
              time.perf_counter() - t0)
    return tok
