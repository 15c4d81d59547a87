"""Our mmap reader against gguf-py's GGUFReader, on tiny files and on the real default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from engine.errors import GGUFError
from engine.gguf.reader import StringArray, _Cursor, _read_string_array, open_gguf
from tests.ggufs import write_tiny_gguf


def _reference_value(field):
    if field.types[0] == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return np.array([field.parts[i][0] for i in field.data])
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]][0]


def _assert_same_as_gguf_py(path):
    ref = GGUFReader(path)
    with open_gguf(path) as gf:
        ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(gf.metadata) == list(ref_fields)
        for key, field in ref_fields.items():
            ours, theirs = gf.metadata[key], _reference_value(field)
            if isinstance(theirs, np.ndarray):
                np.testing.assert_array_equal(np.asarray(ours), theirs)
            else:
                assert ours == theirs, key
        assert [t.name for t in gf.tensors] == [t.name for t in ref.tensors]
        for ours, theirs in zip(gf.tensors, ref.tensors):
            assert ours.shape == tuple(int(d) for d in reversed(theirs.shape)), ours.name
            assert ours.ggml_type == int(theirs.tensor_type)
            assert ours.n_elements == int(theirs.n_elements)
            assert ours.n_bytes == int(theirs.n_bytes)
            assert ours.offset == int(theirs.data_offset)
            assert np.array_equal(gf.raw(ours), np.asarray(theirs.data).view(np.uint8).reshape(-1))


def test_tiny_file_matches_gguf_py(tmp_path):
    _assert_same_as_gguf_py(write_tiny_gguf(tmp_path / "tiny.gguf"))


def test_typed_metadata(tmp_path):
    with open_gguf(write_tiny_gguf(tmp_path / "tiny.gguf")) as gf:
        assert gf.metadata_types["test.flag"] == "bool" and gf.metadata["test.flag"] is True
        assert gf.metadata_types["test.i8"] == "int8" and gf.metadata["test.i8"] == -5
        assert gf.metadata_types["tokenizer.ggml.tokens"] == "array[string]"
        assert gf.metadata_types["tokenizer.ggml.scores"] == "array[float32]"
        assert gf.tensor("blk.0.ffn_up.weight").type_name == "Q8_0"
        assert gf.tensor("blk.0.ffn_up.weight").shape == (128, 64)
        assert gf.path.is_absolute()


@pytest.mark.slow
def test_default_model_matches_gguf_py(default_model):
    ref = GGUFReader(default_model)
    with open_gguf(default_model) as gf:
        assert len(gf.tensors) == len(ref.tensors)
        assert [t.ggml_type for t in gf.tensors] == [int(t.tensor_type) for t in ref.tensors]
        assert [t.offset for t in gf.tensors] == [int(t.data_offset) for t in ref.tensors]
        tokens = ref.fields["tokenizer.ggml.tokens"]
        assert gf.metadata["tokenizer.ggml.tokens"] == [
            bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data]


def _string_array_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(8, "little") + b for b in items)


def test_string_array_is_compact_and_reads_like_a_list():
    items = [b"a", b"", "\u2581h\u00e9llo".encode(), b"\xff\xfe", "\U0001f600".encode(), b"z" * 300]
    cur = _Cursor(memoryview(_string_array_bytes(items) + b"tail"), Path("x.gguf"))
    arr = _read_string_array(cur, len(items), "k")
    expected = [b.decode("utf-8", errors="replace") for b in items]
    assert isinstance(arr, StringArray) and len(arr) == len(items)
    assert cur.pos == len(_string_array_bytes(items))  # stops right before the next value
    assert list(arr) == expected and arr == expected and arr == tuple(expected)
    assert [arr[i] for i in range(-len(items), len(items))] == expected + expected
    assert arr[1:4] == expected[1:4] and arr[::-2] == expected[::-2]
    assert arr.index("\U0001f600") == 4 and "a" in arr and "b" not in arr
    assert arr != expected[:-1] and arr != expected[:-1] + ["y"]
    assert arr.nbytes == sum(map(len, items)) + 8 * (len(items) + 1)  # no per-item objects
    with pytest.raises(IndexError):
        arr[len(items)]
    assert StringArray.from_strings(expected) == arr == StringArray.from_strings(expected)


@pytest.mark.parametrize("cut", [4, 8 + 1 + 3, 8 + 1 + 8 + 2])
def test_truncated_string_array_is_a_clear_error(cut):
    data = _string_array_bytes([b"a", b"bc", b"def"])[:cut]
    with pytest.raises(GGUFError, match="item of k|length of an item of k"):
        _read_string_array(_Cursor(memoryview(data), Path("x.gguf")), 3, "k")


def test_empty_string_array():
    arr = _read_string_array(_Cursor(memoryview(b""), Path("x.gguf")), 0, "k")
    assert len(arr) == 0 and list(arr) == [] and arr == [] and not arr
