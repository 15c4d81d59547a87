"""Fused GGUF GEMV kernels (engine/kernels) and QuantLinear, against gguf-py and float64 math.

Weights are random GGUF blocks: legacy types quantized from random floats by gguf-py, k-quants
as random bytes with sane f16 scales (gguf-py cannot quantize them). References:
* dequantization: `gguf.quants.dequantize` (bit-exact);
* the kernels' product: float64 W @ x_q, where x_q is the activation rounded to 8 bits per
  block as documented (simulated here in numpy, independently of the C++), so the kernel must
  match to float rounding: |y - ref| <= 1e-5 * sum_i |W_ri x_q,i|;
* against the exact float64 W @ x the error of that rounding is bounded: each activation moves
  by at most amax_block / 254 <= |x_block| / 254, so |e| <= sqrt(B) / 254 * |x| (B = block
  length) and |y - W x| <= |W_r| |e| by Cauchy-Schwarz.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from engine import kernels
from engine.quant_linear import GEMV_MAX_T, QuantLinear

LEGACY = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
KQUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
FLOATS = [Q.F32, Q.F16, Q.BF16]
# byte offsets of the f16 scale fields in each block (ggml-common.h)
F16_FIELDS = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def random_weight(t: Q, rows: int, n: int, seed: int = 0) -> np.ndarray:
    """GGUF bytes [rows, row_bytes] of a random weight of type t."""
    rng = np.random.default_rng(seed)
    if t in LEGACY or t in FLOATS:
        w = rng.standard_normal((rows, n), dtype=np.float32) * 0.05
        return gguf_quantize(w, t).view(np.uint8).reshape(rows, -1)
    bs, ts = GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, size=(rows, n // bs, ts), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        d = rng.uniform(1e-3, 1e-2, size=(rows, n // bs)).astype(np.float16)
        b[..., off:off + 2] = d[..., None].view(np.uint8)
    return b.reshape(rows, -1)


def reference_weight(raw: np.ndarray, t: Q) -> np.ndarray:
    return gguf_dequantize(raw, t).astype(np.float64)  # [rows, n]


def act_block(t: Q) -> int:
    return 256 if t in KQUANTS else 32


def simulate_activation_rounding(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, d): x [T, n] f32 -> int codes [T, n/block, block] and scales [T, n/block, 1] (f32)."""
    T = x.shape[0]
    xb = x.reshape(T, -1, block)
    amax = np.abs(xb).max(-1, keepdims=True)
    inv = np.zeros_like(amax)
    np.divide(np.float32(127), amax, out=inv, where=amax > 0)
    q = np.clip(np.rint(xb * inv), -127, 127)
    return q, amax / np.float32(127)


def random_x(T: int, n: int, seed: int = 1) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((T, n), dtype=np.float32))
    x[0, :32] = 0.0  # an all-zero block takes the amax == 0 branch
    return x


@pytest.fixture(scope="module")
def k():
    mod = kernels.load()
    if mod is None:
        pytest.skip(f"fused kernels unavailable here: {kernels.disabled_reason()}")
    return mod


@pytest.mark.parametrize("t", LEGACY + KQUANTS + FLOATS, ids=lambda t: t.name)
def test_dequant_rows_and_get_rows_bit_exact(k, t):
    n = 512
    raw = random_weight(t, 37, n)
    ref = gguf_dequantize(raw, t).astype(np.float32)
    w = torch.from_numpy(raw)
    np.testing.assert_array_equal(k.dequant_rows(w, int(t), n, 0, 37, 2).numpy(), ref)
    np.testing.assert_array_equal(k.dequant_rows(w, int(t), n, 5, 3, 1).numpy(), ref[5:8])
    ids = torch.tensor([36, 0, 7, 7])
    np.testing.assert_array_equal(k.get_rows(w, int(t), n, ids).numpy(), ref[ids.numpy()])


@pytest.mark.parametrize("t", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_activation_rounding_is_as_documented(k, t):
    x = random_x(3, 512)
    q, d = simulate_activation_rounding(x.numpy(), act_block(t))
    expected = (q.astype(np.float32) * d).reshape(3, 512)
    np.testing.assert_array_equal(k.quantize_activations(x, int(t)).numpy(), expected)


# Instruction sets the x86 kernels are compiled for; each is tested where the CPU has it.
ISAS = ["avx2", "avx512-vnni"]


@pytest.fixture(params=ISAS)
def kisa(k, request):
    """The kernel module switched to one instruction set (restored afterwards)."""
    if request.param not in kernels.isa_options():
        pytest.skip(f"{request.param} kernels need a CPU with it (this one: "
                    f"{', '.join(kernels.isa_options())})")
    before = k.isa()
    k.use_isa(request.param)
    assert k.isa() == request.param
    yield k
    k.use_isa(before)


@pytest.mark.parametrize("T", [1, 3, 7, GEMV_MAX_T])  # kernel groups: 2+1, 4+2+1, 8+8
@pytest.mark.parametrize("t", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_gemv_quantized(kisa, t, T):
    k = kisa
    rows, n = 37, 512  # odd row count: the thread split has a ragged end
    raw = random_weight(t, rows, n, seed=T)
    w64 = reference_weight(raw, t)
    x = random_x(T, n, seed=T + 10)
    y = k.gemv(torch.from_numpy(raw), int(t), x, 2).double().numpy()  # [T, rows]

    q, d = simulate_activation_rounding(x.numpy(), act_block(t))
    xq = (q.astype(np.float64) * d.astype(np.float64)).reshape(T, n)
    ref_q = xq @ w64.T
    scale = np.abs(xq) @ np.abs(w64).T
    assert np.all(np.abs(y - ref_q) <= 1e-5 * scale + 1e-12), np.abs(y - ref_q).max()

    exact = x.double().numpy() @ w64.T
    bound = np.sqrt(act_block(t)) / 254 * np.outer(np.linalg.norm(x.numpy(), axis=1),
                                                   np.linalg.norm(w64, axis=1))
    assert np.all(np.abs(y - exact) <= bound * 1.0001)


def test_instruction_sets_give_identical_results(k):
    """The VNNI kernels only fuse the byte products of the AVX2 ones: same integer sums, same
    float operations, so the outputs are bit-identical."""
    options = kernels.isa_options()
    if len(options) < 2:
        pytest.skip(f"only {options} on this CPU")
    before = k.isa()
    try:
        for t in LEGACY + KQUANTS + FLOATS + [Q.MXFP4]:
            n = 512
            if t == Q.MXFP4:
                raw = np.random.default_rng(3).integers(0, 256, size=(29, n // 32, 17), dtype=np.uint8)
                raw[..., 0] = 120  # sane E8M0 exponents
                raw = raw.reshape(29, -1)
            else:
                raw = random_weight(t, 29, n)
            x = random_x(11, n)
            outs = []
            for name in options:
                k.use_isa(name)
                outs.append(k.gemv(torch.from_numpy(raw), int(t), x, 2))
            for other in outs[1:]:
                assert torch.equal(outs[0], other), t.name
    finally:
        k.use_isa(before)


def test_unknown_instruction_set_is_refused(k):
    with pytest.raises(RuntimeError, match="not available on this CPU"):
        k.use_isa("sse2")
    assert k.isa() in kernels.isa_options()


@pytest.mark.parametrize("t", FLOATS, ids=lambda t: t.name)
def test_gemv_float_types_exact(kisa, t):
    k = kisa
    raw = random_weight(t, 9, 100)  # row length not a multiple of 8/16: scalar tails
    w64 = reference_weight(raw, t)
    x = random_x(2, 100)
    y = k.gemv(torch.from_numpy(raw), int(t), x, 2).double().numpy()
    ref = x.double().numpy() @ w64.T
    assert np.all(np.abs(y - ref) <= 1e-5 * (np.abs(x.double().numpy()) @ np.abs(w64).T) + 1e-12)


@pytest.mark.parametrize("t", [Q.Q8_0, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_gemv_threads_agree(k, t):
    raw = torch.from_numpy(random_weight(t, 301, 256))
    x = random_x(2, 256)
    y1 = k.gemv(raw, int(t), x, 1)
    torch.testing.assert_close(k.gemv(raw, int(t), x, 2), y1, rtol=0, atol=0)
    torch.testing.assert_close(k.gemv(raw, int(t), x, 7), y1, rtol=0, atol=0)
    # a token's result does not depend on the other tokens of the call (up to float rounding:
    # the single-token path may sum blocks in another order)
    torch.testing.assert_close(k.gemv(raw, int(t), x[1:], 2), y1[1:], rtol=1e-5, atol=1e-6)


def test_gemv_rejects_bad_shapes(k):
    raw = torch.from_numpy(random_weight(Q.Q4_K, 4, 256))
    with pytest.raises(RuntimeError, match="bytes per row"):
        k.gemv(raw, int(Q.Q4_K), torch.zeros(1, 512), 1)
    with pytest.raises(RuntimeError, match="multiple of the block size"):
        k.gemv(raw, int(Q.Q4_K), torch.zeros(1, 200), 1)
    with pytest.raises(RuntimeError, match="unsupported ggml type"):
        k.gemv(raw, 20, torch.zeros(1, 256), 1)
    with pytest.raises(RuntimeError, match="out of range"):
        k.get_rows(raw, int(Q.Q4_K), 256, torch.tensor([4]))


# -- QuantLinear ------------------------------------------------------------------------------

def write_gguf(path, tensors: dict[str, tuple[np.ndarray, Q]]):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for name, (raw, t) in tensors.items():
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from engine.gguf.reader import open_gguf

    tensors = {
        "q4k.weight": (random_weight(Q.Q4_K, 33, 512, seed=3), Q.Q4_K),
        "q5_0.weight": (random_weight(Q.Q5_0, 70, 96, seed=4), Q.Q5_0),
        "q8_0.weight": (random_weight(Q.Q8_0, 1000, 64, seed=5), Q.Q8_0),
        "bias": (np.random.default_rng(6).standard_normal(33, dtype=np.float32), Q.F32),
        "experts.weight": (random_weight(Q.Q6_K, 3 * 5, 256, seed=7).reshape(3, 5, -1), Q.Q6_K),
    }
    path = write_gguf(tmp_path_factory.mktemp("ql") / "tiny.gguf", tensors)
    with open_gguf(path) as gf:
        yield gf, tensors


@pytest.fixture(params=["kernels", "fallback"])
def mode(request, monkeypatch):
    if request.param == "kernels" and kernels.load() is None:
        pytest.skip(f"fused kernels unavailable here: {kernels.disabled_reason()}")
    if request.param == "fallback":  # what happens without a compiler / with LLMLENS_NO_KERNELS=1
        monkeypatch.setattr(kernels, "load", lambda: None)
    return request.param


@pytest.mark.parametrize("name", ["q4k.weight", "q5_0.weight", "q8_0.weight"])
def test_quant_linear_forward(tiny_file, mode, name):
    gf, tensors = tiny_file
    raw, t = tensors[name]
    ql = QuantLinear.from_gguf(gf, gf.tensor(name))
    assert ql.uses_kernels == (mode == "kernels")
    w64 = reference_weight(raw, t)
    assert (ql.out_features, ql.in_features) == w64.shape
    assert ql.nbytes == raw.nbytes == gf.tensor(name).n_bytes  # packed, not float32
    assert ql.kernel_max_t >= (GEMV_MAX_T if mode == "kernels" else 0)
    for T in (1, max(ql.kernel_max_t, GEMV_MAX_T) + 5):  # fused GEMV / chunked dequantize + GEMM
        x = random_x(T, ql.in_features, seed=T)
        y = ql(x).double().numpy()
        exact = x.double().numpy() @ w64.T
        mag = np.abs(x.double().numpy()) @ np.abs(w64).T
        if mode == "kernels" and T <= ql.kernel_max_t:  # activations rounded to 8 bits
            bound = np.sqrt(act_block(t)) / 254 * np.outer(np.linalg.norm(x.numpy(), axis=1),
                                                           np.linalg.norm(w64, axis=1))
            assert np.all(np.abs(y - exact) <= bound * 1.0001)
        else:  # exact float32 product
            assert np.all(np.abs(y - exact) <= 1e-5 * mag + 1e-12)
    np.testing.assert_array_equal(ql.dequantize().numpy(), w64.astype(np.float32))


def test_quant_linear_small_chunks_and_bias(tiny_file, mode, monkeypatch):
    import engine.quant_linear as qlmod

    gf, tensors = tiny_file
    monkeypatch.setattr(qlmod, "CHUNK_BYTES", 4 * 512 * 5)  # 5 rows per chunk: ragged last chunk
    ql = QuantLinear.from_gguf(gf, gf.tensor("q4k.weight"), bias=gf.tensor("bias"))
    w64 = reference_weight(*tensors["q4k.weight"])
    b = tensors["bias"][0].astype(np.float64)
    half = ql.kernel_max_t // 2 + 2  # 2 * half tokens > kernel_max_t: the dequantize + GEMM path
    x = random_x(2 * half, 512).view(2, half, 512)  # leading dims are kept
    y = ql(x)
    assert y.shape == (2, half, 33)
    exact = x.double().numpy() @ w64.T + b
    assert np.allclose(y.double().numpy(), exact, rtol=0, atol=1e-4)


def test_quant_linear_rows(tiny_file, mode):
    gf, tensors = tiny_file
    ql = QuantLinear.from_gguf(gf, gf.tensor("q8_0.weight"))
    ids = torch.tensor([[999, 0], [5, 5]])
    rows = ql.rows(ids)
    assert rows.shape == (2, 2, 64)
    ref = reference_weight(*tensors["q8_0.weight"]).astype(np.float32)
    np.testing.assert_array_equal(rows.numpy(), ref[ids.numpy()])
    with pytest.raises(IndexError):
        ql.rows(torch.tensor([1000]))


def test_quant_linear_experts_share_one_buffer(tiny_file, mode):
    gf, tensors = tiny_file
    experts = QuantLinear.experts_from_gguf(gf, gf.tensor("experts.weight"))
    assert len(experts) == 3
    raw, t = tensors["experts.weight"]
    for e, ql in enumerate(experts):
        assert (ql.out_features, ql.in_features) == (5, 256)
        np.testing.assert_array_equal(ql.dequantize().numpy(),
                                      gguf_dequantize(raw[e], t).astype(np.float32))
    assert experts[1].packed.untyped_storage().data_ptr() == experts[0].packed.untyped_storage().data_ptr()


def test_kernels_disabled_by_env(monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_status", kernels.KernelStatus("not-loaded", ""))
    monkeypatch.setenv("LLMLENS_NO_KERNELS", "1")
    assert kernels.load() is None
    assert "LLMLENS_NO_KERNELS" in kernels.disabled_reason()


def test_failed_build_falls_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_status", kernels.KernelStatus("not-loaded", ""))
    monkeypatch.delenv("LLMLENS_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_cpu_problem", lambda: None)
    # Skip the library built at install time; build into an empty dir.
    monkeypatch.setattr(kernels, "_installed_checked", False)
    monkeypatch.setattr(kernels, "_installed", (None, ""))  # restored afterwards
    monkeypatch.setenv("LLMLENS_KERNELS_RUNTIME_BUILD", "1")
    monkeypatch.setenv("LLMLENS_KERNEL_BUILD_DIR", str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CXX", "/bin/false")  # a compiler that always fails
    assert kernels.load() is None
    assert kernels.disabled_reason().startswith("build failed")
    assert "unavailable" in capsys.readouterr().err
    raw = random_weight(Q.Q4_K, 3, 256)
    ql = QuantLinear(torch.from_numpy(raw), Q.Q4_K, 256)
    assert not ql.uses_kernels
    x = random_x(1, 256)
    exact = x.double().numpy() @ reference_weight(raw, Q.Q4_K).T
    assert np.allclose(ql(x).double().numpy(), exact, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_real_model_matrices(k, default_model):
    """Every ggml type of the default Gemma 3 270M file, real scales: kernel vs float64."""
    from engine.gguf.reader import open_gguf

    with open_gguf(default_model) as gf:
        seen: dict[str, object] = {}
        for info in gf.tensors:
            if len(info.shape) == 2 and info.type_name != "F32":
                seen.setdefault(info.type_name, info)
        assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= set(seen)
        for name, info in seen.items():
            rows = min(info.shape[0], 1024)  # the 262k-row head: its first rows suffice
            raw = np.array(gf.raw(info)).reshape(info.shape[0], -1)[:rows]
            ql = QuantLinear(torch.from_numpy(raw), info.ggml_type, info.shape[1])
            w64 = reference_weight(raw, Q(info.ggml_type))
            x = random_x(2, info.shape[1])
            err = np.abs(ql(x).double().numpy() - x.double().numpy() @ w64.T)
            scale = np.outer(np.linalg.norm(x.numpy(), axis=1), np.linalg.norm(w64, axis=1))
            assert (err / scale).max() < 5e-3, (name, (err / scale).max())


def test_quant_linear_cat(tiny_file, mode):
    gf, tensors = tiny_file
    a = QuantLinear.from_gguf(gf, gf.tensor("q4k.weight"), bias=gf.tensor("bias"))
    b = QuantLinear(torch.from_numpy(random_weight(Q.Q4_K, 7, 512, seed=9)), Q.Q4_K, 512)
    both = QuantLinear.cat([a, b])
    assert (both.out_features, both.in_features) == (40, 512)
    x = random_x(2, 512)
    ya, yb = torch.split(both(x), [33, 7], dim=-1)
    torch.testing.assert_close(ya, a(x), rtol=1e-6, atol=1e-7)  # rows are computed independently
    torch.testing.assert_close(yb, b(x), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="one ggml type"):
        QuantLinear.cat([a, QuantLinear.from_gguf(gf, gf.tensor("q5_0.weight"))])


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q8_0, Q.Q5_0, Q.Q6_K, Q.F16], ids=lambda t: t.name)
def test_moe_gemm_equals_one_gemv_per_expert(k, t):
    E, rows, n = 5, 23, 512
    raw = np.stack([random_weight(t, rows, n, seed=10 + e) for e in range(E)])  # [E, rows, rb]
    w = torch.from_numpy(raw)
    experts = torch.tensor([3, 0, 4, 3, 1])  # an expert may appear in two segments
    counts = torch.tensor([1, 11, 0, 2, 7])   # token groups of 8+2+1, 2, 4+2+1 and an empty one
    x = random_x(int(counts.sum()), n, seed=5)
    y = k.moe_gemm(w, int(t), experts, counts, x, 2)
    start = 0
    for e, c in zip(experts.tolist(), counts.tolist()):
        if c:
            assert torch.equal(y[start:start + c], k.gemv(w[e], int(t), x[start:start + c], 1))
        start += c


def test_moe_gemm_rejects_bad_input(k):
    raw = torch.from_numpy(np.stack([random_weight(Q.Q8_0, 4, 64, seed=e) for e in range(3)]))
    one = torch.tensor([1, 1])
    with pytest.raises(RuntimeError, match="out of range"):
        k.moe_gemm(raw, int(Q.Q8_0), torch.tensor([0, 3]), one, torch.zeros(2, 64), 1)
    with pytest.raises(RuntimeError, match="add up to 2 tokens, x has 3"):
        k.moe_gemm(raw, int(Q.Q8_0), torch.tensor([0, 1]), one, torch.zeros(3, 64), 1)
    with pytest.raises(RuntimeError, match="bytes per row"):
        k.moe_gemm(raw, int(Q.Q8_0), torch.tensor([0]), torch.tensor([1]), torch.zeros(1, 96), 1)
