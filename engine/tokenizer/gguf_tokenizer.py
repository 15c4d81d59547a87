"""`GGUFTokenizer`: text <-> token ids for a GGUF file, matching llama.cpp token for token.

Encoding follows `llama_vocab::impl::tokenize`: first the text is cut at every occurrence of a
special token (`_partition`, longest token first; control tokens only when `parse_special`,
user-defined tokens always), then each plain-text fragment goes through the model's encoder
(`backends.py`). Decoding follows `token_to_piece`: control and unknown tokens print nothing
unless asked, `<0xNN>` tokens are raw bytes, SPM pieces turn `▁` back into spaces, byte-level
BPE pieces are mapped back through GPT-2's byte table. llama.cpp's optional "clean spaces" pass
(" ," -> ",", used by `llama_detokenize` for some BPE vocabularies) is not applied: it loses
information, and token-by-token output (`token_to_piece`, our `StreamDecoder`) never has it.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from tokenizers import Tokenizer

from engine.tokenizer.vocab import Attr, Vocab

_C_SPACE = " \t\n\v\f\r"  # C isspace(): what llama.cpp's lstrip/rstrip remove
_SPECIAL_ATTRS = int(Attr.CONTROL | Attr.UNKNOWN)
_PARTITION_ATTRS = int(Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class StreamDecoder:
    """Turns ids into text one at a time; `feed` returns "" until a UTF-8 character completes."""

    def __init__(self, tokenizer: GGUFTokenizer, skip_special: bool = True):
        self._tok = tokenizer
        self._special = not skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.token_bytes(token_id, self._special))

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete sequence becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class GGUFTokenizer:
    """A GGUF vocabulary plus the Rust encoder that reproduces llama.cpp for it."""

    def __init__(self, vocab: Vocab, backend: Tokenizer, *, escape_whitespace: bool,
                 byte_encode: bool):
        self.vocab = vocab
        self._backend = backend
        self._escape = escape_whitespace
        self._byte_encode = byte_encode
        self._piece_cache: dict[tuple[int, bool], bytes] = {}
        self._build_special_index()

    # -- properties ------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def eot_ids(self) -> frozenset[int]:
        """Ids that end a turn / the generation (llama.cpp's end-of-generation set)."""
        return frozenset(self.vocab.eog_ids)

    @property
    def escape_whitespace(self) -> bool:
        """True when the vocabulary spells spaces as "▁" (SPM and SPM-style BPE)."""
        return self._escape

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    def token_text(self, token_id: int) -> str:
        """The raw vocabulary string (`▁the`, `Ġthe`, `<0x0A>`, `<end_of_turn>`)."""
        return self.vocab.tokens[token_id]

    def token_id(self, text: str) -> int | None:
        """The id whose vocabulary string is exactly `text`, if any."""
        return self.vocab.token_to_id.get(text)

    def is_special(self, token_id: int) -> bool:
        """Control or unknown token: not printed by `decode(..., skip_special=True)`."""
        return bool(int(self.vocab.attrs[token_id]) & _SPECIAL_ATTRS)

    # -- encoding --------------------------------------------------------------------------
    def _build_special_index(self) -> None:
        v = self.vocab
        ids = [int(i) for i in (v.attrs & _PARTITION_ATTRS).nonzero()[0]]
        # llama.cpp sorts by byte length, longest first (std::sort; we keep id order on ties).
        ids.sort(key=lambda i: -len(v.tokens[i].encode("utf-8")))
        self._special_order = ids
        # Bucket by the first two characters so a text only pays for the buckets it contains
        # (Gemma has 6k `<unusedN>` controls sharing one bucket).
        buckets: dict[str, list[int]] = {}
        for rank, i in enumerate(ids):
            buckets.setdefault(v.tokens[i][:2], []).append(rank)
        self._buckets = buckets

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        v = self.vocab
        ranks: list[int] = []
        for key, members in self._buckets.items():
            if key in text:
                ranks.extend(members)
        ranks.sort()
        frags: list[str | int] = [text]
        for rank in ranks:
            tid = self._special_order[rank]
            attr = int(v.attrs[tid])
            if not parse_special and attr & _SPECIAL_ATTRS:
                continue
            special = v.tokens[tid]
            if special not in text:
                continue
            out: list[str | int] = []
            for frag in frags:
                if not isinstance(frag, str) or special not in frag:
                    out.append(frag)
                    continue
                start = 0
                while True:
                    at = frag.find(special, start)
                    if at < 0:
                        if start < len(frag):
                            out.append(frag[start:])
                        break
                    left = frag[start:at]
                    if attr & Attr.LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        out.append(left)
                    out.append(tid)
                    start = at + len(special)
                    if attr & Attr.RSTRIP:
                        while start < len(frag) and frag[start] in _C_SPACE:
                            start += 1
            frags = out
        return frags

    def _encode_text(self, text: str) -> list[int]:
        if self._escape:
            text = text.replace(" ", "\u2581")
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids for `text`; `add_special` adds BOS/EOS as the file asks (add_bos_token...),
        `parse_special` lets control-token texts such as `<start_of_turn>` become their ids."""
        v = self.vocab
        frags = self._partition(text, parse_special) if text else []
        out: list[int] = []
        if v.type == "spm":
            if add_special and v.add_bos and v.bos_id is not None:
                out.append(v.bos_id)
            prev_special = True  # the first fragment gets the space prefix, as after a special
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if v.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(self._encode_text(frag))
                prev_special = False
            if add_special and v.add_eos and v.eos_id is not None:
                out.append(v.eos_id)
            return out
        if v.type == "wpm":
            if add_special and v.bos_id is not None:
                out.append(v.bos_id)
        elif add_special and v.add_bos and v.bos_id is not None:
            out.append(v.bos_id)
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
            else:
                out.extend(self._encode_text(frag))
        if v.type == "wpm":
            if add_special and v.sep_id is not None:
                out.append(v.sep_id)
        elif add_special and v.add_eos and v.eos_id is not None:
            out.append(v.eos_id)
        return out

    # -- decoding --------------------------------------------------------------------------
    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """llama.cpp's `token_to_piece`: the bytes this token prints (b"" for hidden ones)."""
        key = (token_id, special)
        piece = self._piece_cache.get(key)
        if piece is None:
            piece = self._piece(token_id, special)
            self._piece_cache[key] = piece
        return piece

    def _piece(self, token_id: int, special: bool) -> bytes:
        v = self.vocab
        if not 0 <= token_id < v.n_vocab:
            return b""
        attr = int(v.attrs[token_id])
        text = v.tokens[token_id]
        if attr & _SPECIAL_ATTRS and not special:
            return b""
        if attr & (_SPECIAL_ATTRS | Attr.USER_DEFINED):
            return text.encode("utf-8")
        if attr & Attr.NORMAL:
            if v.type != "bpe" or self._escape:
                return text.replace("\u2581", " ").encode("utf-8")
            return b"".join(bytes([_UNICODE_TO_BYTE[c]]) if c in _UNICODE_TO_BYTE
                            else c.encode("utf-8") for c in text)
        if attr & Attr.BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""  # unused / undefined tokens print nothing, as in llama.cpp

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for `ids`: llama.cpp's pieces, BOS/EOS dropped when `skip_special` (as
        `llama_detokenize(remove_special=True)`), control tokens hidden unless asked, and the
        space an SPM encoder prefixes removed (as `transformers` and llama-cpp-python do;
        llama.cpp itself keeps it after a BOS). No " ," -> "," clean-up."""
        v = self.vocab
        ids = [int(i) for i in ids]
        remove_space = v.add_space_prefix
        if skip_special and v.add_bos and ids and ids[0] == v.bos_id:
            ids = ids[1:]
        if skip_special and v.add_eos and ids and ids[-1] == v.eos_id:
            ids = ids[:-1]
        parts = [self.token_bytes(i, not skip_special) for i in ids]
        if remove_space and parts and parts[0].startswith(b" "):
            parts[0] = parts[0][1:]
        return b"".join(parts).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special)
