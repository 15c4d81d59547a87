"""Our mmap reader against gguf-py's GGUFReader, on tiny files and on the real default model."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from engine.gguf.reader import open_gguf
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
        assert gf.metadata["tokenizer.ggml.tokens"][:1000] == [
            bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data[:1000]]
