"""What `llmlens bench` reports about the machine and the bound it puts on decode.

- `bench --json` carries the CPU, its SIMD extensions, the kernels' ISA and path, the KV cache
  bytes per token (checked against the cache's real buffers), the memory bandwidth and the
  decode bound derived from it;
- `--depth N` runs (the context holds N cached tokens before the timed prompt and decode);
- the bytes a decode step reads are checked against a count made here from the file's tensors
  and metadata: routed experts at n_used / n_expert, a tied head read whole, sliding-window
  layers reading their window only;
- the bandwidth probe returns a positive figure; bad input gets one clear message.
No timing is asserted: only that figures exist, are finite and hang together.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine import bench
from engine.errors import LLMLensError
from engine.gguf.reader import open_gguf
from engine.models.base import load_model

ROOT = Path(__file__).resolve().parents[1]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _cache_bytes_per_token(model, n_ctx: int = 16) -> int:
    """From the buffers a new cache really allocates, not from the model's formula."""
    cache = model.new_cache(n_ctx)
    tensors = list(cache.keys) + list(cache.values)
    return sum(t.numel() * t.element_size() for t in tensors) // n_ctx


def test_bench_json_reports_machine_and_bound(tiny_model_factory):
    tm = tiny_model_factory("llama")
    out = subprocess.run([sys.executable, "-m", "app.cli", "bench", str(tm.gguf["q8_0"]), "-p", "8",
                          "-n", "4", "-d", "24", "-t", "1", "--reps", "1", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads(out.stdout.strip().splitlines()[-1])

    assert isinstance(s["cpu"], str) and s["cpu"]
    assert isinstance(s["cpu_isas"], list) and set(s["cpu_isas"]) <= set(bench.SIMD_FLAGS)
    assert s["kernel_path"] in ("installed", "runtime-build", "fallback")
    assert isinstance(s["kernel_isa"], str) and s["kernel_isa"]
    assert (s["kernel_isa"] == "none") == (s["kernel_path"] == "fallback")
    assert isinstance(s["kernel_reason"], str)

    assert s["depth"] == 24 and _positive(s["depth_fill_tok_s"])
    model = load_model(tm.gguf["q8_0"], n_ctx=64)
    per_token = _cache_bytes_per_token(model)
    assert s["kv_cache_bytes_per_token"] == per_token
    # every layer of this llama is global: a step at mean context depth + p + n/2 reads it all
    assert s["decode_kv_bytes_per_token"] == int(per_token * (24 + 8 + 4 / 2))
    assert 0 < s["decode_weight_bytes_per_token"] <= Path(tm.gguf["q8_0"]).stat().st_size

    assert _positive(s["mem_bandwidth_gbs"]) and _positive(s["bandwidth_probe_mb"])
    bound = s["mem_bandwidth_gbs"] * 1e9 / (s["decode_weight_bytes_per_token"]
                                           + s["decode_kv_bytes_per_token"])
    assert s["decode_bound_tok_s"] == pytest.approx(bound, rel=1e-3)
    assert s["decode_share_of_bound"] == pytest.approx(s["gen_tok_s"] / bound, rel=1e-2, abs=1e-4)


def test_bench_no_bandwidth_leaves_the_bound_out(tiny_model_factory):
    tm = tiny_model_factory("llama")
    s = bench.run_bench(tm.gguf["q8_0"], n_prompt=4, n_gen=2, threads=1, reps=1).summary()
    assert s["mem_bandwidth_gbs"] is None and s["decode_bound_tok_s"] is None
    assert s["decode_share_of_bound"] is None and s["depth"] == 0 and s["depth_fill_tok_s"] is None
    assert _positive(s["gen_tok_s"])


def test_depth_runs_past_a_sliding_window(tiny_model_factory):
    """Gemma 3 (window 8, every sixth layer global): decode after 40 cached tokens, and the KV
    bytes a step reads count the window on sliding layers, everything on the global one."""
    tm = tiny_model_factory("gemma3")
    path = tm.gguf["q8_0"]
    result = bench.run_bench(path, n_prompt=6, n_gen=4, threads=1, reps=1, depth=40)
    s = result.summary()
    assert s["depth"] == 40 and _positive(s["depth_fill_tok_s"]) and _positive(s["gen_tok_s"])

    with open_gguf(path) as gf:
        md = gf.metadata
        n_layer = md["gemma3.block_count"]
        window = md["gemma3.attention.sliding_window"]
        per_layer = md["gemma3.attention.head_count_kv"] * (
            md["gemma3.attention.key_length"] + md["gemma3.attention.value_length"])
        weights = sum(t.n_bytes for t in gf.tensors)  # tied head: token_embd read whole
    model = load_model(path, n_ctx=64)
    itemsize = _cache_bytes_per_token(model) // (n_layer * per_layer)
    context = 40 + 6 + 4 / 2
    globals_ = [i for i in range(n_layer) if (i + 1) % 6 == 0]  # llama.cpp's gemma3 pattern
    expected_kv = sum(per_layer * itemsize * (context if i in globals_ else min(context, window))
                      for i in range(n_layer))
    assert s["decode_kv_bytes_per_token"] == int(expected_kv)
    assert s["decode_weight_bytes_per_token"] == weights


def test_moe_decode_reads_only_the_routed_experts(tiny_model_factory):
    tm = tiny_model_factory("qwen2moe")
    path = tm.gguf["q8_0"]
    with open_gguf(path) as gf:
        share = gf.metadata["qwen2moe.expert_used_count"] / gf.metadata["qwen2moe.expert_count"]
        assert gf.has_tensor("output.weight")  # untied: the embedding is one row a step
        expected = sum(t.n_bytes * (share if "_exps." in t.name else 1.0)
                       for t in gf.tensors if t.name != "token_embd.weight")
        everything = sum(t.n_bytes for t in gf.tensors)
    model = load_model(path, n_ctx=32)
    weights, kv = bench.decode_read_bytes(model, context=10)
    assert weights == int(expected) and weights < everything
    assert kv == 10 * model.cache_bytes_per_token


def test_bandwidth_probe_is_positive():
    assert _positive(bench.measure_read_bandwidth(1, nbytes=16 * 2**20, reps=2))
    assert bench.bandwidth_probe_bytes() > 0


def test_machine_description():
    assert bench.cpu_model_name()
    isas = bench.cpu_isas()
    assert list(isas) == [f for f in bench.SIMD_FLAGS if f in isas]  # in SIMD_FLAGS order
    assert isinstance(bench.kernel_isa(), str)


def test_bad_input_gets_one_message(tiny_model_factory):
    tm = tiny_model_factory("llama")
    with pytest.raises(LLMLensError, match="--depth >= 0"):
        bench.run_bench(tm.gguf["q8_0"], n_prompt=4, n_gen=2, reps=1, depth=-1)
    out = subprocess.run([sys.executable, "-m", "app.cli", "bench", str(tm.gguf["q8_0"]), "-n", "0",
                          "--reps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert "-n >= 1" in out.stderr and "Traceback" not in out.stderr


def test_compare_llamacpp_runs_at_depth(tiny_model_factory):
    """The llama.cpp side of tests/bench/compare_llamacpp.py fills N tokens, then times."""
    pytest.importorskip("llama_cpp")
    from tests.bench.compare_llamacpp import _one_llamacpp

    tm = tiny_model_factory("llama")
    r = _one_llamacpp(str(tm.gguf["q8_0"]), 8, 4, 1, repack=False, depth=24)
    assert _positive(r["depth_fill_tok_s"]) and _positive(r["gen_tok_s"])
    assert r["repack"] is False and r["system_info"]
