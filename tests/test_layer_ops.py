"""The fused per-layer ops of the kernels (engine/kernels/layer_ops.h) and the float16 KV cache.

- `rms_norm` equals torch's rms_norm to float32 rounding, for any row count;
- `attn_decode` (one query position against the cache, flash-decoding chunks merged over the
  threads) equals softmax(q K^T * scale) V computed in float64 from the same stored values,
  for float32 and float16 caches, grouped heads, strided views (a sliding window's slice, MLA's
  values as the first columns of the key rows) and any thread count; bad shapes are refused;
- asked for them, `attn_decode` also writes the attention probabilities (the chunks' weights
  rescaled by the merged max and sum) without changing its output; with a recorder, decode
  steps take the kernel's output and its probabilities (an open inspection panel changes no
  logit);
- `rope` equals the plain cos/sin rotation, NEOX and adjacent-pair modes, partial rotary widths;
- a model decoding on a float16 KV cache (the default where the kernel runs) stays within
  float16 rounding of the float32 cache, and `attention()` takes the kernel only where it may
  (one token, no mask, no recorder asking for probabilities).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import kernels
from engine.layers import attention, fused_ops
from engine.models.base import load_model
from tests.fixtures.tiny_models import max_rel_err, tiny_model_factory  # noqa: F401 (fixture)

K = kernels.load()
pytestmark = pytest.mark.skipif(K is None, reason="the fused kernels are not available")


def reference_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q K^T * scale) [Hkv, G, S] in float64 from the stored (possibly float16) keys."""
    hq, d = q.shape
    hkv = k.shape[0]
    qg = q.double().view(hkv, hq // hkv, d)
    return (qg @ k.double().transpose(1, 2) * scale).softmax(-1)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q K^T * scale) V in float64 from the stored (possibly float16) values."""
    return (reference_probs(q, k, scale) @ v.double()).reshape(q.shape[0], -1)


@pytest.mark.parametrize("rows", [1, 3, 130])
@pytest.mark.parametrize("n", [640, 256, 77])
def test_rms_norm_matches_torch(rows, n):
    gen = torch.Generator().manual_seed(rows * n)
    x = torch.randn(rows, n, generator=gen) * 3
    w = torch.randn(n, generator=gen)
    ours = K.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(ours, F.rms_norm(x, (n,), w, 1e-6), rtol=1e-5, atol=1e-6)
    # a non-contiguous [T, H, D] view (q norms on split projections) is normed per row
    xv = torch.randn(2, 8, n, generator=gen)[:, ::2]
    torch.testing.assert_close(K.rms_norm(xv, w, 1e-6), F.rms_norm(xv, (n,), w, 1e-6),
                               rtol=1e-5, atol=1e-6)


CASES = [  # Hq, Hkv, D, Dv, S
    (4, 1, 256, 256, 1), (4, 1, 256, 256, 600), (8, 2, 64, 64, 77), (32, 8, 128, 128, 1500),
    (16, 1, 576, 512, 300), (3, 3, 20, 12, 50),  # widths not a multiple of 8: the portable loop
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hq,hkv,d,dv,s", CASES)
def test_attn_decode_matches_softmax_attention(hq, hkv, d, dv, s, dtype):
    gen = torch.Generator().manual_seed(hq * 1000 + s)
    q = torch.randn(hq, d, generator=gen)
    # keys and values as slices of larger buffers, like the cache's [Hkv, n_ctx, D] rows
    kbuf = torch.randn(hkv, s + 9, d, generator=gen).to(dtype)
    vbuf = torch.randn(hkv, s + 4, dv + 3, generator=gen).to(dtype)
    k, v = kbuf[:, 5:5 + s], vbuf[:, :s, :dv]
    ref = reference(q, k, v, 0.125)
    ref_probs = reference_probs(q, k, 0.125).reshape(hq, s)
    for threads in (1, 2, 3):
        out = K.attn_decode(q, k, v, 0.125, threads)
        assert out.shape == (hq, dv) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)
        probs = torch.full((hq, s), float("nan"))
        assert torch.equal(K.attn_decode(q, k, v, 0.125, threads, probs), out)
        torch.testing.assert_close(probs.double(), ref_probs, rtol=1e-5, atol=1e-7)


def test_attn_decode_mla_values_are_a_prefix_of_the_key_rows():
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(1, 700, 576, generator=gen).half()  # [c (512), k_pe (64)] per position
    q = torch.randn(16, 576, generator=gen)
    probs = torch.empty(16, 700)
    out = K.attn_decode(q, rows, rows[..., :512], 0.07, 2, probs)
    torch.testing.assert_close(out.double(), reference(q, rows, rows[..., :512], 0.07),
                               rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(probs.double(), reference_probs(q, rows, 0.07)[0],
                               rtol=1e-5, atol=1e-7)


def test_attn_decode_refuses_bad_shapes():
    q, k = torch.randn(4, 64), torch.randn(1, 10, 64)
    with pytest.raises(RuntimeError, match="keys have"):
        K.attn_decode(torch.randn(4, 32), k, k, 1.0, 1)
    with pytest.raises(RuntimeError, match="do not group"):
        K.attn_decode(torch.randn(3, 64), torch.randn(2, 10, 64), torch.randn(2, 10, 64), 1.0, 1)
    with pytest.raises(RuntimeError, match="differ"):
        K.attn_decode(q, k, torch.randn(1, 9, 64), 1.0, 1)
    with pytest.raises(RuntimeError, match="contiguous rows"):
        K.attn_decode(q, k.transpose(1, 2).contiguous().transpose(1, 2), k, 1.0, 1)
    with pytest.raises(RuntimeError, match="float16 or float32"):
        K.attn_decode(q, k.double(), k, 1.0, 1)
    for bad in (torch.empty(4, 9), torch.empty(4, 10).double(), torch.empty(10, 4).T):
        with pytest.raises(RuntimeError, match="probs must be"):
            K.attn_decode(q, k, k, 1.0, 1, bad)


class Probe:
    def __init__(self, wants: bool):
        self.rows, self._wants = [], wants

    def wants(self, kind: str) -> bool:
        return self._wants

    def record(self, kind, layer, probs):
        self.rows.append(probs)


def test_attention_takes_the_kernel_only_where_it_may(monkeypatch):
    calls = []
    real = fused_ops()
    spy = type("Spy", (), {
        "attn_decode": staticmethod(lambda *a: calls.append(a) or real.attn_decode(*a)),
        "rms_norm": staticmethod(real.rms_norm)})()
    monkeypatch.setattr("engine.layers.fused_ops", lambda: spy)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 1, 32, generator=gen), torch.randn(2, 9, 32, generator=gen),
               torch.randn(2, 9, 32, generator=gen))
    explicit = reference(q[:, 0], k, v, 0.3).float()
    torch.testing.assert_close(attention(q, k, v, None, 0.3)[:, 0], explicit)
    assert len(calls) == 1
    mask = torch.ones(1, 9, dtype=torch.bool)
    for out in (attention(q, k, v, mask, 0.3),
                attention(torch.randn(4, 2, 32), k, v, torch.ones(2, 9, dtype=torch.bool), 0.3)):
        assert out.dtype == torch.float32
    assert len(calls) == 1  # a mask or two tokens: the explicit product
    # with a recorder the output is still the kernel's (inspecting changes no output) and the
    # recorder gets the kernel's probabilities
    probe = Probe(wants=True)
    assert torch.equal(attention(q, k, v, None, 0.3, probe, 0), attention(q, k, v, None, 0.3))
    assert len(calls) == 3 and len(probe.rows) == 1 and probe.rows[0].shape == (4, 1, 9)
    qd, kd = q[:, 0].double().view(2, 2, 32), k.double()
    torch.testing.assert_close(probe.rows[0].double().view(2, 2, 9),
                               (qd @ kd.transpose(1, 2) * 0.3).softmax(-1), rtol=1e-5, atol=1e-6)
    # a float16 cache on the explicit path (prompt passes) is read as float32
    torch.testing.assert_close(attention(q, k.half(), v.half(), mask, 0.3)[:, 0],
                               reference(q[:, 0], k.half(), v.half(), 0.3).float())


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_float16_kv_cache_decodes_within_its_rounding(tiny_model_factory, monkeypatch, name):
    monkeypatch.setenv("LLMLENS_KV_CACHE", "auto")  # tests/conftest.py makes it f32
    tm = tiny_model_factory(name)
    model = load_model(tm.gguf["f32"], n_ctx=64)
    c = model.config
    f16 = model.new_cache()
    assert all(t.dtype == torch.float16 for t in f16.keys + f16.values)
    assert f16.bytes_per_token == model.cache_bytes_per_token == \
        c.n_layer * c.n_head_kv * (c.head_dim + c.head_dim_v) * 2
    f32 = model.new_cache(dtype=torch.float32)
    ids = [int(i) for i in tm.load_ref()["ids"]]
    with torch.inference_mode():
        a = model.forward(torch.tensor(ids[:-3]), f16, 0, all_logits=False)
        b = model.forward(torch.tensor(ids[:-3]), f32, 0, all_logits=False)
        for pos in range(len(ids) - 3, len(ids)):  # decode steps: the fused kernel reads f16
            tok = torch.tensor(ids[pos:pos + 1])
            a = model.forward(tok, f16, pos, all_logits=False)
            b = model.forward(tok, f32, pos, all_logits=False)
            assert max_rel_err(a.numpy(), b.numpy()) <= 1e-2
    assert max_rel_err(a.numpy(), b.numpy()) > 0  # the caches really differ in precision
    monkeypatch.setenv("LLMLENS_KV_CACHE", "f32")
    assert load_model(tm.gguf["f32"], n_ctx=64).cache_bytes_per_token == 2 * f16.bytes_per_token


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("n_rot,width,t", [(64, 64, 1), (64, 96, 5), (32, 128, 3)])
def test_rope_matches_the_torch_rotation(neox, n_rot, width, t):
    from engine.layers import RoPE

    rope = RoPE(n_rot, 10000.0, neox)
    c, s = rope.tables(7, t)  # [t, n_rot] each
    gen = torch.Generator().manual_seed(n_rot + t)
    x = torch.randn(t, 4, width, generator=gen).transpose(0, 1)  # [H, T, D], strided like q
    fused = K.rope(x, c, s, neox)
    assert fused.shape == x.shape and fused.is_contiguous()
    # RoPE.__call__ is the plain (cos, sin) formula, independent of the fused path
    torch.testing.assert_close(fused, rope(x, *rope.cos_sin(7, t)), rtol=1e-6, atol=1e-6)
    assert torch.equal(fused[..., n_rot:], x[..., n_rot:])
    for bad_c, bad_s in ((c.repeat(2, 1), s.repeat(2, 1)),  # tables for other positions
                         (c[:, :n_rot - 1], s[:, :n_rot - 1])):  # an odd rotary width
        with pytest.raises(RuntimeError, match="tables"):
            K.rope(x, bad_c, bad_s, neox)
