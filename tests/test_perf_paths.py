"""The fast paths of the engine give the results of the exact ones (no timing assertions).

- packed weights (QuantLinear, fused kernels) vs exact float32 weights on the default model;
- weights held in memory: about the file's tensor bytes, not 4-8x (float32);
- `llmlens bench --json` runs and reports well-formed numbers;
- the no-kernels fallback (LLMLENS_NO_KERNELS=1) generates the same greedy text;
- the building blocks behind them: stacked projections, the cached rope tables.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import kernels
from engine.layers import FusedLinear, RoPE, YarnParams
from engine.linear import Linear
from engine.models.base import load_model
from engine.quant_linear import QuantLinear
from tests.fixtures.tiny_models import tiny_model_factory  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(not kernels.available(),
                                   reason=f"fused kernels unavailable: {kernels.disabled_reason()}")


def _weight_tensors(obj, seen_objs=None, out=None) -> dict[int, torch.Tensor]:
    """Every tensor reachable from a model's attributes, one per storage."""
    seen_objs = set() if seen_objs is None else seen_objs
    out = {} if out is None else out
    if id(obj) in seen_objs:
        return out
    seen_objs.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.setdefault(obj.untyped_storage().data_ptr(), obj)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _weight_tensors(x, seen_objs, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _weight_tensors(x, seen_objs, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__.startswith("engine"):
        for name, x in vars(obj).items():
            if name != "gguf":  # the file object and its memory map are not weights
                _weight_tensors(x, seen_objs, out)
    return out


# -- default model: packed vs exact -------------------------------------------------------------

@pytest.fixture(scope="module")
def default_pair(default_model):
    packed = load_model(default_model, n_ctx=96)
    exact = load_model(default_model, n_ctx=96, exact=True)
    return packed, exact


@needs_kernels
def test_default_model_is_packed(default_pair):
    packed, exact = default_pair
    block = packed.blocks[0]
    assert isinstance(block.attn.wo, QuantLinear) and isinstance(block.mlp.down, QuantLinear)
    assert isinstance(packed.lm_head, QuantLinear)
    assert packed.embed.table is packed.lm_head  # tied head: one packed copy serves both
    assert isinstance(exact.blocks[0].attn.wo, Linear) and isinstance(exact.lm_head, Linear)


@needs_kernels
def test_packed_logits_close_to_exact(default_pair):
    """Decode-size calls round activations to 8 bits per block (as llama.cpp does): logits move
    by a few percent and the top-1 token almost never changes. Prompt-size calls (T above every
    type's kernel crossover, quant_linear.KERNEL_MAX_T) dequantize and multiply in float32: the
    same logits up to rounding."""
    packed, exact = default_pair
    from engine.tokenizer import load_tokenizer

    tok = load_tokenizer(packed.gguf)
    ids = tok.encode("The capital of France is Paris. The capital of Germany is")
    assert 4 <= len(ids) <= 16
    with torch.inference_mode():
        from engine.quant_linear import KERNEL_MAX_T

        long_n = max(max(pair) for pair in KERNEL_MAX_T.values()) + 1
        for n, bound in ((len(ids), 0.2), (long_n, 1e-4)):
            seq = torch.tensor((ids * (long_n // len(ids) + 1))[:n])
            a = packed.forward(seq, packed.new_cache(), 0)  # [T, V]
            b = exact.forward(seq, exact.new_cache(), 0)
            rel = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
            agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
            assert rel <= bound, (n, rel)
            assert agree >= 0.9, (n, agree)
        # one decode step after the prompt
        ca, cb = packed.new_cache(), exact.new_cache()
        packed.forward(torch.tensor(ids), ca, 0, all_logits=False)
        exact.forward(torch.tensor(ids), cb, 0, all_logits=False)
        a = packed.forward(torch.tensor(ids[-1:]), ca, len(ids), all_logits=False)[0]
        b = exact.forward(torch.tensor(ids[-1:]), cb, len(ids), all_logits=False)[0]
        assert ((a - b).norm() / b.norm()).item() <= 0.2
        assert int(a.argmax()) == int(b.argmax())


@needs_kernels
def test_weights_take_about_the_file_size(default_pair, default_model):
    from engine.gguf.reader import open_gguf

    packed, exact = default_pair
    with open_gguf(default_model) as gf:
        file_bytes = sum(t.n_bytes for t in gf.tensors)
    held = sum(t.untyped_storage().nbytes() for t in _weight_tensors(packed).values())
    assert held <= 1.05 * file_bytes, (held / 2**20, file_bytes / 2**20)
    held_exact = sum(t.untyped_storage().nbytes() for t in _weight_tensors(exact).values())
    assert held_exact > 3 * file_bytes  # the float32 path really is the other one


# -- bench --------------------------------------------------------------------------------------

def test_bench_json_on_tiny_model(tiny_model_factory):  # noqa: F811
    tm = tiny_model_factory("llama")
    out = subprocess.run([sys.executable, "-m", "app.cli", "bench", str(tm.gguf["q8_0"]), "-p", "24",
                          "-n", "4", "-t", "1", "--reps", "1", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("prompt_tok_s", "gen_tok_s", "ttft_s", "load_s", "rss_before_load_mb", "peak_rss_mb"):
        assert isinstance(s[key], (int, float)) and math.isfinite(s[key]) and s[key] > 0, (key, s[key])
    assert s["peak_rss_mb"] >= s["rss_before_load_mb"]
    assert s["n_prompt"] == 24 and s["n_gen"] == 4 and s["threads"] == 1


# -- no-kernels fallback ------------------------------------------------------------------------

_GREEDY_SCRIPT = """
import json, sys
from engine.generate import Done, Token, generate
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from engine import kernels
model = load_model(sys.argv[1], n_ctx=64)
tok = load_tokenizer(model.gguf)
prompt = [int(i) for i in sys.argv[2].split(",")]
events = list(generate(model, tok, prompt, SamplingParams(temperature=0.0), max_new_tokens=8))
print(json.dumps({"kernels": kernels.available(), "ids": [e.id for e in events if isinstance(e, Token)],
                  "text": events[-1].text}))
"""


def _greedy_in_subprocess(path: Path, prompt: list[int], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _GREEDY_SCRIPT, str(path), ",".join(map(str, prompt))],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_kernels
def test_no_kernels_fallback_generates_the_same(tiny_model_factory):  # noqa: F811
    tm = tiny_model_factory("llama")
    prompt = [int(i) for i in tm.load_ref()["ids"][:6]]
    fast = _greedy_in_subprocess(tm.gguf["q8_0"], prompt, {"LLMLENS_NO_KERNELS": "0"})
    slow = _greedy_in_subprocess(tm.gguf["q8_0"], prompt, {"LLMLENS_NO_KERNELS": "1"})
    assert fast["kernels"] is True and slow["kernels"] is False
    assert len(slow["ids"]) >= 3
    if fast["ids"] != slow["ids"]:
        # allowed only at a near tie of the exact (fallback) model: find the first divergence
        k = next(i for i, (a, b) in enumerate(zip(fast["ids"], slow["ids"])) if a != b)
        model = load_model(tm.gguf["q8_0"], n_ctx=64, exact=True)  # what the fallback computes
        logits = model.forward(torch.tensor(prompt + slow["ids"][:k]), model.new_cache(), 0)[-1]
        gap = abs(float(logits[slow["ids"][k]] - logits[fast["ids"][k]]))
        assert gap <= 0.02 * float(logits.abs().max()), (k, gap)
    else:
        assert fast["text"] == slow["text"]


# -- building blocks ----------------------------------------------------------------------------

@needs_kernels
def test_fused_projection_equals_its_parts(tiny_model_factory):  # noqa: F811
    tm = tiny_model_factory("llama")
    model = load_model(tm.gguf["q8_0"], n_ctx=32)
    attn = model.blocks[0].attn
    group, sizes = attn.wqkv.groups[0]
    assert len(sizes) == 3 and isinstance(group, QuantLinear)
    assert group.packed.data_ptr() == attn.wq.packed.data_ptr()  # stacked at load: no copy
    x = torch.randn(3, attn.wq.in_features)
    for T in (1, 3):
        q, k, v = attn.wqkv(x[:T])
        torch.testing.assert_close(q, attn.wq(x[:T]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(k, attn.wk(x[:T]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(v, attn.wv(x[:T]), rtol=1e-6, atol=1e-6)
    # float32 parts (and mixed storage types) are stacked by copying, with biases
    gen = torch.Generator().manual_seed(0)
    parts = [Linear(torch.randn(5, 8, generator=gen), torch.randn(5, generator=gen)),
             Linear(torch.randn(3, 8, generator=gen))]
    fused = FusedLinear(parts)
    x = torch.randn(2, 8, generator=gen)
    for got, lin in zip(fused(x), parts):
        torch.testing.assert_close(got, lin(x))


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("n_rot", [16, 8])
def test_rope_rotate_matches_reference_formula(neox, n_rot):
    yarn = YarnParams(orig_ctx=64, beta_fast=32.0, beta_slow=1.0, attn_factor=1.0)
    for rope in (RoPE(n_rot, 10000.0, neox), RoPE(n_rot, 10000.0, neox, freq_scale=0.25, yarn=yarn)):
        x = torch.randn(3, 5, 16)  # [H, T, D], D >= n_rot
        for start in (0, 300):  # 300: past the first cached table, which must grow
            cos, sin = rope.cos_sin(start, 5)
            ref = rope(x, cos, sin)
            got = rope.rotate(x, *rope.tables(start, 5))
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
            pos = torch.arange(start, start + 5, dtype=torch.float64)[:, None] * rope.theta
            np.testing.assert_allclose(cos.numpy(), (pos.cos() * rope.mscale).float().numpy())
