"""`llmlens trace` / engine.inspect against transformers, the row-filtered Recorder, LiveTrace.

On the tiny random model of every architecture (tests/fixtures/tiny_models.py), the .npz that
`llmlens trace MODEL --ids ... --out F.npz` writes (f32 GGUF) is compared with transformers
(eager attention, float32), computed here in one forward pass with hooks:
- attention probabilities of every layer and head within 1e-5 (exact zeros where HF's are:
  the future, outside gemma3's sliding window);
- MoE layers: router probabilities (softmax of the gate's logits) within 1e-5, the top-k
  expert ids identical (best first);
- logit lens: the top-10 of final norm + lm_head (+ gemma3's softcap) over the residual after
  each decoder layer: logits within 1e-4 of the row's scale, ids identical wherever the
  reference has no near-tie; the last layer's lens is the model's logits.
Also: `--rows A:B` equals the same rows of the full trace; bad input is one error line, exit 2;
a LiveTrace fed by generate() holds the same routing as inspect() over the same ids, and its
newest attention rows sum to 1 and equal inspect()'s last row; `bench --inspect --json`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main
from engine.generate import Token, generate
from engine.inspect import inspect
from engine.models.base import load_model
from engine.sampling import SamplingParams
from engine.tokenizer import load_tokenizer
from engine.trace import LiveTrace, Recorder
from tests.fixtures.tiny_models import ARCHS, tiny_model_factory  # noqa: F401 (fixture)

ATTN_TOL = 1e-5
# Router probabilities come after every earlier layer: float32 rounding (the fused RMS norm
# sums in another order than transformers) reaches ~1e-5 by layer 21 of the deepest model.
PROB_TOL = 3e-5
LENS_K = 10


def ids_arg(ids) -> str:
    return ",".join(str(int(i)) for i in ids)


def run_trace(path, ids, out, *extra: str) -> dict[str, np.ndarray]:
    rc = main(["trace", str(path), "--ids", ids_arg(ids), "--out", str(out), *extra])
    assert rc == 0
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def hf_reference(tm, ids) -> dict:
    """transformers (eager attention, float32) over `ids`: attention [L][H, T, T], router
    probabilities per MoE layer [T, E] with the top-k ids ranked by weight, and the lens
    logits [L][T, V] of the residual after every decoder layer."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tm.hf_dir, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    layers = hf.model.layers
    resid: dict[int, torch.Tensor] = {}
    routes: dict[int, tuple] = {}
    hooks = [layer.register_forward_hook(
        lambda m, i, o, li=li: resid.__setitem__(li, (o[0] if isinstance(o, tuple) else o)[0]))
        for li, layer in enumerate(layers)]
    for name, mod in hf.named_modules():  # the MoE routers (as tests/fixtures/make_tiny_models)
        parts = name.split(".")
        if parts[-1] in ("gate", "router") and "layers" in parts and hasattr(mod, "top_k"):
            li = int(parts[parts.index("layers") + 1])
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, li=li: routes.__setitem__(li, o)))
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.as_tensor(np.asarray(ids, np.int64))[None],
                     output_attentions=True)
            cap = getattr(hf.config, "final_logit_softcapping", None)
            # LFM2 calls its final norm embedding_norm; Granite divides by logits_scaling
            final_norm = getattr(hf.model, "norm", None) or hf.model.embedding_norm
            logit_div = getattr(hf.config, "logits_scaling", None) or 1.0

            def head(h):  # [T, C] -> [T, V]
                logits = hf.lm_head(final_norm(h)) / logit_div
                return torch.tanh(logits / cap) * cap if cap else logits

            lens = {li: head(h).float().numpy() for li, h in sorted(resid.items())}
    finally:
        for h in hooks:
            h.remove()
    # LFM2's convolution layers (layer_types "conv") have no attention
    types = getattr(hf.config, "layer_types", None) or ["attention"] * len(layers)
    attn_layers = [li for li, t in enumerate(types) if t != "conv"]
    assert len(lens) == len(layers) and len(out.attentions) == len(attn_layers)
    # The hooks read the residual stream: the last layer's lens must be the model's logits.
    np.testing.assert_allclose(lens[len(layers) - 1], out.logits[0].numpy(), rtol=0, atol=1e-4)
    router = {}
    for li, (logits, w, idx) in sorted(routes.items()):
        order = torch.argsort(w, dim=-1, descending=True)
        # LFM2-MoE, GLM-4.5, DeepSeek-V3: sigmoid; the others: softmax
        sigmoid = hf.config.model_type in ("lfm2_moe", "glm4_moe", "deepseek_v3")
        router[li] = ((torch.sigmoid(logits.float()) if sigmoid
                       else torch.softmax(logits.float(), -1)).numpy(),
                      torch.gather(idx, -1, order).numpy())
    sinks = any(hasattr(getattr(layer, "self_attn", None), "sinks") for layer in layers)
    # a selection bias (LFM2's expert_bias, DeepSeek-V3 / GLM-4.5 / ERNIE 4.5's
    # e_score_correction_bias) ranks experts by score + bias, not by weight
    biased = any(n.endswith((".expert_bias", ".e_score_correction_bias"))
                 for n, _ in [*hf.named_buffers(), *hf.named_parameters()])
    return {"attn": {li: a[0].numpy() for li, a in zip(attn_layers, out.attentions)},
            "n_layer": len(layers), "biased": biased, "router": router, "lens": lens,
            "logits": out.logits[0].numpy(), "sinks": sinks}


def assert_lens_matches(ours_ids, ours_logits, ref_logits, what: str):
    """ours [T, k] against the reference's full logits [T, V]: values, and ids away from ties."""
    k = ours_ids.shape[1]
    ref_ids = np.argsort(-ref_logits, axis=-1, kind="stable")[:, :k + 1]  # [T, k+1]
    ref_top = np.take_along_axis(ref_logits, ref_ids, -1)  # [T, k+1], descending
    scale = np.abs(ref_logits).max()
    np.testing.assert_allclose(ours_logits, ref_top[:, :k], rtol=0, atol=1e-4 * scale,
                               err_msg=what)
    tie = 1e-3 * scale
    gaps = ref_top[:, :-1] - ref_top[:, 1:]  # [T, k]: gap below each rank
    checked = 0
    for t in range(ours_ids.shape[0]):
        for j in range(k):
            clear = gaps[t, j] > tie and (j == 0 or gaps[t, j - 1] > tie)
            if clear:
                assert ours_ids[t, j] == ref_ids[t, j], f"{what}: row {t}, rank {j}"
                checked += 1
    assert checked >= ours_ids.size // 2, f"{what}: too many near-ties to check ({checked})"


@pytest.mark.parametrize("name", ARCHS)
def test_trace_matches_transformers(name, tiny_model_factory, tmp_path):
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    T = len(ids)
    got = run_trace(tm.gguf["f32"], ids, tmp_path / "t.npz")
    ref = hf_reference(tm, ids)
    n_layer = ref["n_layer"]

    np.testing.assert_array_equal(got["ids"], ids)
    assert got["ids"].dtype == np.int32
    np.testing.assert_array_equal(got["rows"], [0, T])
    assert sorted(int(k.split(".")[1]) for k in got if k.startswith("attn.")) == sorted(ref["attn"])
    for li, ref_a in ref["attn"].items():
        a = got[f"attn.{li}"]
        assert a.dtype == np.float32 and a.shape == ref_a.shape == (ref_a.shape[0], T, T)
        np.testing.assert_allclose(a, ref_a, rtol=0, atol=ATTN_TOL, err_msg=f"{name} layer {li}")
        assert np.all(a[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)  # future
        assert np.all(a[ref_a == 0] == 0), f"{name} layer {li}: masked keys must be exact zeros"
        # rows sum to 1, less the sink's share where the model has attention sinks (gpt-oss)
        np.testing.assert_allclose(a.sum(-1), ref_a.sum(-1) if ref["sinks"] else 1.0,
                                   rtol=0, atol=1e-5)

    moe = sorted(ref["router"])
    assert sorted(int(k.split(".")[1]) for k in got if k.startswith("topk_ids.")) == moe
    assert bool(moe) == tm.moe
    for li in moe:
        probs, ref_ids = ref["router"][li]
        rp, ti, tw = got[f"router_probs.{li}"], got[f"topk_ids.{li}"], got[f"topk_weights.{li}"]
        assert rp.dtype == tw.dtype == np.float32 and ti.dtype == np.int32
        assert rp.shape == probs.shape and ti.shape == tw.shape == ref_ids.shape
        np.testing.assert_allclose(rp, probs, rtol=0, atol=PROB_TOL, err_msg=f"{name} layer {li}")
        if ref["biased"]:  # same experts; ours ranked by score + bias, the reference by weight
            np.testing.assert_array_equal(np.sort(ti, 1), np.sort(ref_ids, 1),
                                          err_msg=f"{name} MoE layer {li}")
            continue
        np.testing.assert_array_equal(ti, ref_ids, err_msg=f"{name} MoE layer {li}")
        # the weights are the router's choice in the same order (renormalised/scaled or not)
        assert np.all(np.diff(tw, axis=-1) <= 1e-7)

    assert sorted(int(k.split(".")[1]) for k in got if k.startswith("lens_ids.")) == \
        list(range(n_layer))
    for li in range(n_layer):
        li_ids, li_logits = got[f"lens_ids.{li}"], got[f"lens_logits.{li}"]
        assert li_ids.dtype == np.int32 and li_logits.dtype == np.float32
        assert li_ids.shape == li_logits.shape == (T, LENS_K)
        assert_lens_matches(li_ids, li_logits, ref["lens"][li], f"{name} lens layer {li}")
    # the last layer's lens is the model's own output
    assert_lens_matches(got[f"lens_ids.{n_layer - 1}"], got[f"lens_logits.{n_layer - 1}"],
                        ref["logits"], f"{name} logits")


@pytest.mark.parametrize("name", ["gemma3", "qwen2moe"])
def test_rows_and_what_select_parts_of_the_full_trace(name, tiny_model_factory, tmp_path):
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    full = run_trace(tm.gguf["f32"], ids, tmp_path / "full.npz")
    part = run_trace(tm.gguf["f32"], ids, tmp_path / "part.npz", "--rows", "10:20")
    np.testing.assert_array_equal(part["rows"], [10, 20])
    assert set(part) == set(full)
    for key, arr in part.items():
        if key.startswith(("attn.", "lens_")):
            np.testing.assert_allclose(arr, full[key][..., 10:20, :] if key.startswith("attn.")
                                       else full[key][10:20], rtol=0, atol=1e-6, err_msg=key)
        elif key != "rows":
            np.testing.assert_allclose(arr, full[key], rtol=0, atol=1e-6, err_msg=key)
    only = run_trace(tm.gguf["f32"], ids, tmp_path / "routing.npz", "--what", "routing")
    assert {k.split(".")[0] for k in only} == ({"ids", "rows", "router_probs", "topk_ids",
                                               "topk_weights"} if tm.moe else {"ids", "rows"})


@pytest.mark.parametrize("args, needle", [
    (["--rows", "5:2"], "--rows"),
    (["--rows", "a:b"], "--rows"),
    (["--rows", "0:99"], "--rows"),
    (["--what", "attention,foo"], "--what"),
    (["--ids", "1,2,99999999"], "out of range"),
    (["--ids", "1,x"], "--ids"),
])
def test_bad_input_is_one_error_line(args, needle, tiny_model_factory, tmp_path, capsys):
    path = tiny_model_factory("llama").gguf["f32"]
    argv = ["trace", str(path), "--out", str(tmp_path / "t.npz")]
    if "--ids" not in args:
        argv += ["--ids", "1,2,3,4"]
    rc = main(argv + args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("llmlens: error: ") and needle in err, err
    assert not (tmp_path / "t.npz").exists()


def test_bad_output_folder_and_model(tiny_model_factory, tmp_path, capsys):
    path = tiny_model_factory("llama").gguf["f32"]
    for argv in (["trace", str(path), "--ids", "1,2", "--out", str(tmp_path / "no" / "t.npz")],
                 ["trace", str(tmp_path / "missing.gguf"), "--ids", "1,2", "--out",
                  str(tmp_path / "t.npz")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("llmlens: error: "), err


def test_recorder_row_filter():
    rec = Recorder(["attn_probs", "moe_topk_ids"], rows=(3, 6))
    probs = torch.rand(2, 4, 8)  # [H, T, S] of a call at positions 2..5
    rec.begin_step(2, 4)
    assert rec.wants("attn_probs") and rec.last.kept_rows == (3, 6)
    rec.record("attn_probs", 0, probs)
    rec.record("moe_topk_ids", 0, torch.arange(8).view(4, 2))  # routing is never row-filtered
    kept = rec.last.get("attn_probs", 0)
    np.testing.assert_array_equal(kept, probs[:, 1:4].numpy())
    assert kept.shape == (2, 3, 8) and kept.flags.c_contiguous
    assert not np.shares_memory(kept, probs.numpy())
    assert rec.last.get("moe_topk_ids", 0).shape == (4, 2)
    rec.begin_step(6, 1)  # nothing of this call is kept: the model may skip computing it
    assert rec.last.kept_rows == (6, 6) and not rec.wants("attn_probs")
    assert rec.wants("moe_topk_ids")
    rec.record("attn_probs", 0, torch.rand(2, 1, 7))
    assert rec.last.get("attn_probs", 0) is None


@pytest.mark.parametrize("name", ["qwen2moe", "gemma3", "deepseek2_lite"])
def test_live_trace_matches_inspect(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    model = load_model(tm.gguf["f32"], n_ctx=64)
    tok = load_tokenizer(model.gguf)
    live = LiveTrace(model.config.n_layer)
    assert live.newest_attention() == (-1, [])
    prompt = [int(i) for i in tm.load_ref()["ids"][:20]]  # > gemma3's window of 8
    gen = [e.id for e in generate(model, tok, prompt, SamplingParams(temperature=0.0),
                                  max_new_tokens=6, trace=live.recorder) if isinstance(e, Token)]
    assert len(gen) >= 2
    fed = prompt + gen[:-1]  # generate() never feeds its last token back
    n = len(fed)
    assert live.n_tokens == (n if tm.moe else 0)
    ins = inspect(model, fed, what=("attention", "routing"))

    snap = live.snapshot_routing(0, n + 5)
    assert (snap.start, snap.end) == (0, n if tm.moe else 0)
    assert list(snap.layers) == list(ins.topk_ids) == live.moe_layers
    assert bool(snap.layers) == tm.moe
    for li in snap.layers:
        np.testing.assert_array_equal(snap.topk_ids[li], ins.topk_ids[li])
        assert snap.topk_ids[li].dtype == np.int32
        np.testing.assert_allclose(snap.topk_weights[li], ins.topk_weights[li], atol=1e-5)
        np.testing.assert_allclose(snap.router_probs[li], ins.router_probs[li], atol=1e-5)
    if tm.moe:
        mid = live.snapshot_routing(3, 7)
        li = snap.layers[0]
        np.testing.assert_array_equal(mid.topk_ids[li], ins.topk_ids[li][3:7])

    pos, rows = live.newest_attention()
    assert pos == n - 1 and len(rows) == model.config.n_layer
    for li, row in enumerate(rows):
        assert row.dtype == np.float32 and row.shape == (ins.attn[li].shape[0], n)
        np.testing.assert_allclose(row.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(row, ins.attn[li][:, n - 1], atol=1e-5)
    rows[0][:] = -1  # a copy: the trace is unchanged
    assert live.newest_attention()[1][0].min() >= 0

    # A new generation restarts at position 0: what the old one recorded past it is dropped.
    gen2 = [e.id for e in generate(model, tok, prompt[:5], SamplingParams(temperature=0.0),
                                   max_new_tokens=2, trace=live.recorder) if isinstance(e, Token)]
    n2 = 5 + max(len(gen2) - 1, 0)
    assert live.n_tokens == (n2 if tm.moe else 0)
    assert live.newest_attention()[0] == n2 - 1
    if tm.moe:
        again = inspect(model, (prompt[:5] + gen2)[:n2], what=("routing",))
        for li in snap.layers:
            np.testing.assert_array_equal(live.snapshot_routing().topk_ids[li],
                                          again.topk_ids[li])


def test_bench_inspect_json(tiny_model_factory, capsys):
    path = tiny_model_factory("qwen2moe").gguf["f32"]
    assert main(["bench", str(path), "--inspect", "-p", "8", "-n", "4", "--reps", "2",
                 "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["reps"] == 2 and len(s["plain_gen_tok_s_all"]) == len(s["live_gen_tok_s_all"]) == 2
    assert s["plain_gen_tok_s"] > 0 and s["live_gen_tok_s"] > 0
    pairs = sorted(lv / pl for lv, pl in zip(s["live_gen_tok_s_all"], s["plain_gen_tok_s_all"]))
    assert s["live_ratio"] == pytest.approx(sum(pairs) / 2, rel=1e-3)
