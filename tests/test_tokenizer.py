"""The GGUF tokenizer against llama.cpp: its own test vectors and llama-cpp-python itself.

References are never written here: expected ids come from llama.cpp's `models/*.gguf.out`
files (tests/fixtures/llama_cpp_src.py) or from llama-cpp-python run on the same file.
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import GGUFError, LLMLensError
from engine.gguf.reader import open_gguf
from engine.tokenizer import Attr, load_tokenizer
from tests.fixtures import llama_cpp_src


@functools.lru_cache(maxsize=None)
def _tokenizer(path: str):
    return load_tokenizer(open_gguf(path))


_LLAMAS: dict[str, object] = {}


def _llama(path: str):
    import llama_cpp  # the dev extra installs it: a missing reference is a failure, not a skip
    if path not in _LLAMAS:
        _LLAMAS[path] = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return _LLAMAS[path]


@pytest.fixture(autouse=True, scope="module")
def _close_llamas():
    # Close llama.cpp handles while the library is still loaded (their __del__ at interpreter
    # exit prints tracebacks).
    yield
    for llm in list(_LLAMAS.values()):
        llm.close()
    _LLAMAS.clear()


def _vocab_files() -> list[Path]:
    files = sorted(llama_cpp_src.llama_cpp_source_dir().glob("models/ggml-vocab-*.gguf"))
    assert files, "llama.cpp's source tree holds no ggml-vocab-*.gguf files"
    return files


def pytest_generate_tests(metafunc):
    # Parametrize by the files that actually ship with the llama.cpp tree, so a new vocab
    # with test vectors is picked up without editing this file.
    if "vector_file" in metafunc.fixturenames:
        files = [p for p in _vocab_files() if p.with_name(p.name + ".inp").is_file()]
        metafunc.parametrize("vector_file", files or [None], ids=lambda p: p.name if p else "none")
    if "vocab_file" in metafunc.fixturenames:
        files = _vocab_files()
        metafunc.parametrize("vocab_file", files or [None], ids=lambda p: p.name if p else "none")


# Vocabularies llama.cpp has test vectors for but that we do not reproduce exactly. Every entry
# is an xfail(strict=True), so fixing one turns the suite red until it is removed from here.
KNOWN_VECTOR_FAILURES: dict[str, str] = {}
# Where llama.cpp itself departs from the original (Hugging Face) tokenizer on our corpus; we
# follow the original, which is also what llama.cpp's own test vectors encode.
KNOWN_LLAMA_CPP_DIFFERENCES: dict[str, str] = {
    "ggml-vocab-bert-bge.gguf": "llama.cpp's WordPiece preprocessing drops Hangul vowel/final "
                                "jamo after NFD and regional-indicator symbols (flags), which "
                                "BERT's normalizer keeps",
    "ggml-vocab-deepseek-llm.gguf": "llama.cpp's std::wregex does not match U+3000 in the class "
                                    "[　-。] of the deepseek-llm regex (Oniguruma and Python "
                                    "do), so ' \\u3000' splits differently after a space run",
}
# Vocab files whose tokenizer model we do not implement at all.
UNSUPPORTED_MODELS = {"t5": "UGM (T5/nomic-bert-moe) tokenizer is not implemented"}


def _model_of(path: Path) -> str:
    return open_gguf(path).metadata.get("tokenizer.ggml.model", "")


def test_llama_cpp_vocab_vectors(vector_file, llama_cpp_source, request):
    """Every `ggml-vocab-*.gguf.inp/.out` pair: ids without BOS/EOS, special tokens not parsed
    (as llama.cpp's tests/test-tokenizer-0.cpp runs them)."""
    assert vector_file is not None, "no llama.cpp vocab test vectors found"
    reason = KNOWN_VECTOR_FAILURES.get(vector_file.name)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    tok = _tokenizer(str(vector_file))
    cases = llama_cpp_src.read_vocab_test(vector_file)
    assert cases
    bad = [(text, want, got) for text, want in cases
           if (got := tok.encode(text, add_special=False, parse_special=False)) != want]
    assert not bad, f"{len(bad)}/{len(cases)} differ, first: {bad[0]!r}"


# -- a varied corpus ---------------------------------------------------------------------------
_WORDS = [
    "Hello", "world", "the", "The", "tokenizer", "naïve", "café", "Äpfel", "straße", "Ñandú",
    "日本語", "中文字符", "한국어", "Привет", "мир", "Ελληνικά", "עברית", "العربية", "हिन्दी",
    "ภาษาไทย", "😀", "👍🏽", "👩‍👩‍👧", "🇫🇷", "e\u0301", "ﬁ", "Ω", "Ω", "K", "½", "²", "①",
    "3.14159", "1234567", "0x1F", "1,000,000", "don't", "I'm", "we'll", "they've", "O'Neil",
    "def f(x):", "return x**2", "{\"a\": [1, 2]}", "<div>", "</div>", "<b>", "http://a.b/c?d=e",
    "#include <stdio.h>", "a_b_c", "CamelCase", "ALLCAPS", "snake_case", "--flag", "...", "?!",
    "\u2581", "▁▁", "<0x41>", "\ufffd", "\x00", "\x7f", "\u00a0", "\u3000", "\u200b",
]
_SPACES = [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "\n\n\n\n", "        "]


def _corpus(specials: list[str], n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = ["", " ", "  ", "\n", "a", " a", "a ", "Hello world", " Hello world", "Hello  world",
             "\n\nHello", "x" * 300, " " * 40, "\n" * 40, "ab" * 100, "😀" * 20]
    pieces = _WORDS + specials
    for _ in range(n - len(texts)):
        parts = []
        for _ in range(rng.randint(1, 14)):
            parts.append(rng.choice(pieces))
            if rng.random() < 0.7:
                parts.append(rng.choice(_SPACES))
        texts.append("".join(parts))
    return texts


def _specials_of(tok, limit: int = 40) -> list[str]:
    """Some special-token texts of this vocabulary (control and user-defined)."""
    ids = [i for i in range(tok.n_vocab)
           if int(tok.vocab.attrs[i]) & int(Attr.CONTROL | Attr.USER_DEFINED)]
    random.Random(1).shuffle(ids)
    return [tok.token_text(i) for i in ids[:limit]]


def _check_against_llama(path: Path, texts: list[str]) -> None:
    tok, llm = _tokenizer(str(path)), _llama(str(path))
    for add_special, parse_special in ((False, False), (True, True), (True, False)):
        bad = []
        for text in texts:
            want = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            got = tok.encode(text, add_special=add_special, parse_special=parse_special)
            if got != want:
                bad.append((text, want, got))
        assert not bad, (f"add_special={add_special} parse_special={parse_special}: "
                         f"{len(bad)}/{len(texts)} differ, first: {bad[0]!r}")


@pytest.mark.slow
def test_default_model_matches_llama_cpp(default_model):
    """Gemma 3's 262k SentencePiece vocabulary on 400 varied strings, three modes."""
    tok = _tokenizer(str(default_model))
    texts = _corpus(_specials_of(tok) + ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>"],
                    n=400)
    _check_against_llama(default_model, texts)


def test_vocab_files_match_llama_cpp(vocab_file, llama_cpp_source, request):
    """Every llama.cpp test vocabulary we support, including special-token parsing and BOS."""
    assert vocab_file is not None, "no llama.cpp vocab files found"
    reason = KNOWN_LLAMA_CPP_DIFFERENCES.get(vocab_file.name)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    model = _model_of(vocab_file)
    if model in UNSUPPORTED_MODELS:
        with pytest.raises(LLMLensError, match="not supported"):
            _tokenizer(str(vocab_file))
        return
    tok = _tokenizer(str(vocab_file))
    _check_against_llama(vocab_file, _corpus(_specials_of(tok), n=120, seed=7))


_GEMMA_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60,
) | st.lists(st.sampled_from(_WORDS + _SPACES + ["<start_of_turn>", "<end_of_turn>", "<b>"]),
             max_size=12).map("".join)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_GEMMA_TEXT)
def test_default_model_random_text(default_model, text):
    tok, llm = _tokenizer(str(default_model)), _llama(str(default_model))
    for parse_special in (False, True):
        assert tok.encode(text, add_special=False, parse_special=parse_special) == \
            llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)


# -- vocabulary metadata and pieces against llama.cpp -------------------------------------------
def _llama_piece(llm, token_id: int, special: bool) -> bytes:
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, token_id, buf, 256, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(llm._model.vocab, token_id, buf, -n, 0, special)
    return buf.raw[:n]


def _id_sample(tok, n: int = 6000) -> list[int]:
    """All non-normal tokens, the first 1000 ids and a random sample of the rest."""
    rng = random.Random(0)
    special = [i for i in range(tok.n_vocab) if int(tok.vocab.attrs[i]) != int(Attr.NORMAL)]
    rest = rng.sample(range(tok.n_vocab), min(n, tok.n_vocab))
    return sorted(set(special) | set(range(min(1000, tok.n_vocab))) | set(rest))


def _check_vocab_against_llama(path: Path, full: bool = False) -> None:
    import llama_cpp

    tok, llm = _tokenizer(str(path)), _llama(str(path))
    vocab = llm._model.vocab
    assert tok.n_vocab == llama_cpp.llama_vocab_n_tokens(vocab)
    null = -1
    assert (tok.bos_id if tok.bos_id is not None else null) == llama_cpp.llama_vocab_bos(vocab)
    assert (tok.eos_id if tok.eos_id is not None else null) == llama_cpp.llama_vocab_eos(vocab)
    assert tok.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)
    assert tok.add_eos == llama_cpp.llama_vocab_get_add_eos(vocab)
    eog = {i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert tok.eot_ids == eog
    attr_mismatch = [i for i in range(tok.n_vocab)
                     if int(tok.vocab.attrs[i]) != llama_cpp.llama_vocab_get_attr(vocab, i)]
    assert not attr_mismatch, [(i, tok.token_text(i)) for i in attr_mismatch[:5]]
    ids = range(tok.n_vocab) if full else _id_sample(tok)
    for special in (False, True):
        bad = []
        for i in ids:
            ours, theirs = tok.token_bytes(i, special), _llama_piece(llm, i, special)
            if theirs.startswith(b"[UNK_BYTE_0x"):
                # llama.cpp prints this marker for a byte-level token holding a character
                # outside GPT-2's byte table (Command-R has raw "™"...); we print the character.
                theirs = tok.token_text(i).encode("utf-8")
            if ours != theirs:
                bad.append(i)
        assert not bad, [(i, tok.token_text(i), tok.token_bytes(i, special),
                          _llama_piece(llm, i, special)) for i in bad[:5]]


def test_vocab_metadata_and_pieces_match_llama_cpp(vocab_file, llama_cpp_source):
    """Special ids, add-BOS/EOS, end-of-generation set, token attributes and every token's
    printed bytes (with and without special tokens) equal llama.cpp's."""
    assert vocab_file is not None, "no llama.cpp vocab files found"
    model = _model_of(vocab_file)
    if model in UNSUPPORTED_MODELS:
        pytest.skip(f"{vocab_file.name}: {UNSUPPORTED_MODELS[model]} (a stated limit)")
    _check_vocab_against_llama(vocab_file)


@pytest.mark.slow
def test_default_model_vocab_matches_llama_cpp(default_model):
    _check_vocab_against_llama(default_model, full=True)


# -- decoding ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_eot_and_specials(default_model):
    tok = _tokenizer(str(default_model))
    eot = tok.token_id("<end_of_turn>")
    assert eot is not None and eot in tok.eot_ids and tok.eos_id in tok.eot_ids
    assert tok.is_special(eot) and tok.is_special(tok.bos_id)
    assert not tok.is_special(tok.encode("Hello", add_special=False)[0])
    ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n")
    assert ids[0] == tok.bos_id and tok.token_id("<start_of_turn>") in ids and eot in ids
    assert tok.decode(ids) == "user\nHi\n"
    assert tok.decode(ids, skip_special=False) == "<bos><start_of_turn>user\nHi<end_of_turn>\n"
    literal = tok.encode("<start_of_turn>", add_special=False, parse_special=False)
    assert tok.token_id("<start_of_turn>") not in literal
    assert tok.decode(literal) == "<start_of_turn>"


def _round_trip_files(llama_cpp_source: Path, default_model: Path) -> list[Path]:
    models = llama_cpp_source / "models"
    return [default_model, models / "ggml-vocab-llama-spm.gguf",
            models / "ggml-vocab-llama-bpe.gguf", models / "ggml-vocab-qwen2.gguf",
            models / "ggml-vocab-gemma-4.gguf"]


@pytest.mark.slow
def test_decode_round_trip_and_stream(llama_cpp_source, default_model):
    """decode(encode(t)) == t, and the stream decoder emits the same text only in whole
    characters, for SPM, byte-level BPE and SPM-style BPE vocabularies."""
    texts = [t for t in _corpus([], n=150, seed=3) if "\x00" not in t and "\ufffd" not in t]
    for path in _round_trip_files(llama_cpp_source, default_model):
        tok = _tokenizer(str(path))
        for text in texts:
            if "\u2581" in text and tok.escape_whitespace:
                continue  # SPM spells " " as "▁": a literal "▁" decodes to a space
            ids = tok.encode(text, add_special=True, parse_special=False)
            assert tok.decode(ids) == text, (path.name, text, ids)
            dec = tok.stream_decoder()
            chunks = [dec.feed(i) for i in ids]
            # The stream keeps the space a space-prefixing SPM encoder added (it continues
            # a prompt); decode() drops it.
            prefix = " " if tok.vocab.add_space_prefix and text else ""
            assert "".join(chunks) + dec.flush() == prefix + text, (path.name, text)
            assert all("\ufffd" not in c for c in chunks), (path.name, text, chunks)


@pytest.mark.slow
def test_stream_decoder_waits_for_whole_characters(default_model):
    tok = _tokenizer(str(default_model))
    # A character Gemma has no token for is spelled as <0xNN> byte tokens.
    char = next(c for c in ("\U0001fae8", "\U0001f9ec", "\u16a0", "\U00010348")
                if tok.token_id(c) is None and tok.token_id("\u2581" + c) is None)
    ids = tok.encode(char, add_special=False)
    assert len(ids) == len(char.encode("utf-8")) and all(
        int(tok.vocab.attrs[i]) & Attr.BYTE for i in ids)
    dec = tok.stream_decoder()
    assert [dec.feed(i) for i in ids] == [""] * (len(ids) - 1) + [char]
    eot = tok.token_id("<end_of_turn>")
    assert tok.stream_decoder().feed(eot) == ""
    assert tok.stream_decoder(skip_special=False).feed(eot) == "<end_of_turn>"


def test_byte_level_stream_decoder(llama_cpp_source):
    tok = _tokenizer(str(llama_cpp_source / "models" / "ggml-vocab-gpt-2.gguf"))
    ids = tok.encode("日本😀", add_special=False)
    dec = tok.stream_decoder()
    out = [dec.feed(i) for i in ids]
    assert "".join(out) == "日本😀"
    assert all(c in ("", "日", "本", "日本", "😀", "本😀") for c in out), out


# -- metadata edge cases -------------------------------------------------------------------------
def test_unknown_pre_tokenizer_warns_and_falls_back(llama_cpp_source):
    md = dict(open_gguf(llama_cpp_source / "models" / "ggml-vocab-gpt-2.gguf").metadata)
    md["tokenizer.ggml.pre"] = "no-such-pre-tokenizer"
    with pytest.warns(UserWarning, match="no-such-pre-tokenizer"):
        tok = load_tokenizer(md)
    ids = tok.encode("Hello world", add_special=False)
    assert tok.decode(ids) == "Hello world"


def test_missing_or_unsupported_vocabulary(llama_cpp_source):
    with pytest.raises(GGUFError, match="tokenizer"):
        load_tokenizer({"general.architecture": "llama"})
    with pytest.raises(LLMLensError, match="not supported"):
        load_tokenizer(open_gguf(llama_cpp_source / "models" / "ggml-vocab-nomic-bert-moe.gguf"))


def test_tiny_written_vocab(tmp_path):
    """A vocab written with gguf-py (no llama.cpp needed): SPM with byte fallback."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>", "<ctl>"] + [f"<0x{b:02X}>" for b in range(256)] \
        + ["▁", "a", "b", "▁a", "ab", "▁ab"]
    types = [2, 3, 3, 3] + [6] * 256 + [1] * 6
    scores = [0.0] * 260 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    w = gguf.GGUFWriter(str(tmp_path / "v.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = load_tokenizer(open_gguf(tmp_path / "v.gguf"))
    ab, a = tokens.index("▁ab"), tokens.index("▁a")
    assert tok.encode("ab") == [1, ab]
    assert tok.encode("a<ctl>ab", add_special=False) == [a, 3, ab]
    # Parsed specials are followed by the space prefix too, as in llama.cpp.
    assert tok.encode("a<ctl>ab", add_special=False, parse_special=False)[:1] == [a]
    assert tok.encode("é", add_special=False) == [tokens.index("▁"), 4 + 0xC3, 4 + 0xA9]
    assert tok.decode(tok.encode("ab é")) == "ab é"
    assert tok.eot_ids == {2}


@pytest.mark.slow
def test_default_model_build_time(default_model, capsys):
    """The build time is reported, never asserted: the machine running the suite is shared."""
    gf = open_gguf(default_model)
    t0 = time.perf_counter()
    tok = load_tokenizer(gf)
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[tokenizer] Gemma 3 vocabulary ({tok.n_vocab} tokens) built in {dt:.2f} s")
    assert tok.n_vocab == len(gf.metadata["tokenizer.ggml.tokens"])


# -- CLI -----------------------------------------------------------------------------------------
def _gpt2_vocab(llama_cpp_source: Path) -> Path:
    return llama_cpp_source / "models" / "ggml-vocab-llama-bpe.gguf"


def test_cli_tokenize(llama_cpp_source, capsys):
    from app.cli import main

    path = _gpt2_vocab(llama_cpp_source)
    llm = _llama(str(path))
    text = "Hello <|eot_id|> wörld"
    assert main(["tokenize", str(path), text]) == 0
    plain = capsys.readouterr().out
    assert [int(x) for x in plain.split()] == llm.tokenize(text.encode(), add_bos=True,
                                                          special=True)
    assert main(["tokenize", str(path), text, "--no-special", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ids": llm.tokenize(text.encode(), add_bos=False, special=False)}
    assert main(["tokenize", str(path), "Hi", "--pieces"]) == 0
    assert "'Hi'" in capsys.readouterr().out


def test_cli_tokenize_jsonl(llama_cpp_source, capsys, monkeypatch):
    from app.cli import main

    path = _gpt2_vocab(llama_cpp_source)
    llm = _llama(str(path))
    texts = ["a", "", "Hello\nworld", "<|begin_of_text|>x", "😀 日本"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(t) + "\n" for t in texts)))
    assert main(["tokenize", str(path), "--jsonl", "--no-special"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x) for x in lines] == [
        llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]


def test_cli_tokenize_errors(tmp_path, capsys, monkeypatch):
    from app.cli import main

    missing = str(tmp_path / "missing.gguf")
    assert main(["tokenize", missing, "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmlens: error:") and "missing.gguf" in err and err.count("\n") == 1
    assert main(["tokenize", missing, "--jsonl"]) == 2
    capsys.readouterr()
    assert main(["tokenize", "a", "b", "c"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_cli_tokenize_default_model(default_model, capsys):
    from app.cli import main

    llm = _llama(str(default_model))
    for argv in (["tokenize", "Hello world"], ["tokenize", "default", "Hello world"]):
        assert main(argv + ["--json"]) == 0
        assert json.loads(capsys.readouterr().out)["ids"] == llm.tokenize(b"Hello world")
