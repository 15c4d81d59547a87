"""GLM-4 MoE (`glm4moe`), ERNIE 4.5 MoE (`ernie4_5-moe`) and DeepSeek-V3-style routing in a
`deepseek2` file, on tiny random transformers models converted by llama.cpp's converter
(tests/fixtures/make_tiny_models.py: glm4moe, ernie4_5_moe, deepseek2_v3).

- f32 vs transformers: logits within 1e-4 of max|ref| at every position (one pass and in
  prefill / decode / prefill pieces), the same experts at every token and MoE layer, their
  weights, and the router's scores;
- `llmlens trace`: router_probs / topk_ids equal the routers' own output; where the router
  ranks by bias-corrected scores, select_scores = router_probs + the HF correction bias and the
  top-k of select_scores within groups_kept (the best groups by their two best scores) are
  exactly the chosen experts, and some token shows an expert picked over one with a higher
  router_probs score (what the bias and the groups are for);
- vs llama.cpp (llama-cpp-python): greedy 32 tokens at f32; f16 logits within 5e-3 everywhere;
  q8_0 within 5e-2 ... 1e-1 where our routing has no near-tie (see test_q8_0_matches_llama_cpp);
- `llmlens info` rows: the routing hyperparameters of each family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.cli import main
from engine.gguf.reader import open_gguf
from engine.gguf.summary import summarize
from engine.models.base import load_model
from engine.models.validate import validate_model_file
from engine.trace import Recorder
from tests.fixtures.tiny_models import (llama_cpp_greedy, llama_cpp_logits, max_rel_err,
                                        tiny_model_factory)  # noqa: F401 (fixture)

NAMES = ("glm4moe", "ernie4_5_moe", "deepseek2_v3")
SIGMOID = {"glm4moe": True, "ernie4_5_moe": False, "deepseek2_v3": True}
TOL = 1e-4


def ref_probs(name: str, router_logits: np.ndarray) -> np.ndarray:
    """The HF router's scores from its logits [.., E]: sigmoid (GLM, V3) or softmax (ERNIE)."""
    t = torch.from_numpy(router_logits).double()
    return (t.sigmoid() if SIGMOID[name] else t.softmax(-1)).numpy()


def hf_bias(tm, layer: int) -> np.ndarray:
    """The HF checkpoint's e_score_correction_bias [E] of one layer (not the GGUF's copy)."""
    from safetensors.numpy import load_file

    tensors = {}
    for f in sorted(tm.hf_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    key = next(k for k in tensors if f"layers.{layer}." in k and "e_score_correction_bias" in k)
    return tensors[key].astype(np.float64).reshape(-1)


def forward(model, ids, recorder=None, pieces: bool = False) -> np.ndarray:
    ids = torch.as_tensor(ids)
    cache = model.new_cache(len(ids) + 4)
    if not pieces:
        return model.forward(ids, cache, 0, recorder).numpy()
    cut = len(ids) - 12  # prefill, one decode step, prefill of the rest
    return torch.cat([model.forward(ids[:cut], cache, 0, recorder),
                      model.forward(ids[cut:cut + 1], cache, cut, recorder),
                      model.forward(ids[cut + 1:], cache, cut + 1, recorder)]).numpy()


# ----------------------------------------------------------------------------- vs transformers

@pytest.mark.parametrize("name", NAMES)
def test_logits_and_routing_match_transformers(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    model = load_model(tm.gguf["f32"])
    assert model.moe_layers == [int(i) for i in ref["moe_layers"]]
    rec = Recorder(["moe_topk_ids", "moe_topk_weights", "moe_probs"])
    logits = forward(model, ref["ids"], rec)
    assert max_rel_err(logits, ref["logits"]) <= TOL
    assert max_rel_err(forward(model, ref["ids"], pieces=True), ref["logits"]) <= TOL
    step = rec.last
    for j, layer in enumerate(ref["moe_layers"]):
        ids, w = step.get("moe_topk_ids", int(layer)), step.get("moe_topk_weights", int(layer))
        ours, theirs = np.argsort(ids, 1), np.argsort(ref["experts"][j], 1)
        np.testing.assert_array_equal(np.take_along_axis(ids, ours, 1),
                                      np.take_along_axis(ref["experts"][j], theirs, 1))
        np.testing.assert_allclose(np.take_along_axis(w, ours, 1),
                                   np.take_along_axis(ref["expert_weights"][j], theirs, 1),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(step.get("moe_probs", int(layer)),
                                   ref_probs(name, ref["router_logits"][j]), rtol=0, atol=1e-5)


def test_glm_nextn_blocks_are_counted_but_never_loaded(tiny_model_factory):
    tm = tiny_model_factory("glm4moe")
    gf = open_gguf(tm.gguf["f32"])
    md = gf.metadata
    assert md["glm4moe.nextn_predict_layers"] == 1 and md["glm4moe.block_count"] == 4
    validate_model_file(gf)  # the declared NextN block 3 has no tensors: still a good file
    model = load_model(gf)
    assert model.config.n_layer == 3 and len(model.blocks) == 3
    assert model.router.gating_name == "sigmoid" and model.router.n_groups == 4
    assert model.n_shared_experts == 1 and model.qk_norm


def add_nextn_block(src, dst) -> None:
    """Copy a float32 glm4moe GGUF, adding a NextN block's tensors as blk.{n_layer} (what a
    converter writes from GLM-4.5's checkpoint; HF's tiny model has no weights for it)."""
    import gguf

    r = gguf.GGUFReader(src)
    arch = "glm4moe"
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = gguf.GGUFValueType(f.types[0])
        sub = gguf.GGUFValueType(f.types[-1]) if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)]))
    n = int(r.fields[f"{arch}.block_count"].contents()) - 1
    rng = np.random.default_rng(0)
    D, E = 64, 8
    for name, shape in (("attn_norm", (D,)), ("nextn.eh_proj", (D, 2 * D)), ("nextn.enorm", (D,)),
                        ("nextn.hnorm", (D,)), ("ffn_gate_inp", (E, D)), ("exp_probs_b", (E,))):
        suffix = "bias" if name == "exp_probs_b" else "weight"
        w.add_tensor(f"blk.{n}.{name}.{suffix}", rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_glm_nextn_weights_in_the_file_are_ignored(tiny_model_factory, tmp_path):
    from engine.models.base import estimate_memory

    tm = tiny_model_factory("glm4moe")
    ids = tm.load_ref()["ids"]
    path = tmp_path / "glm4moe-nextn.gguf"
    add_nextn_block(tm.gguf["f32"], path)
    with_nextn, plain = open_gguf(path), open_gguf(tm.gguf["f32"])
    assert with_nextn.has_tensor("blk.3.nextn.eh_proj.weight")
    validate_model_file(with_nextn)
    assert estimate_memory(with_nextn).weights_bytes == estimate_memory(plain).weights_bytes
    model = load_model(with_nextn)
    assert len(model.blocks) == 3
    np.testing.assert_array_equal(forward(model, ids), forward(load_model(plain), ids))


# ----------------------------------------------------------------------------- llmlens trace

def run_trace(path, ids, out) -> dict[str, np.ndarray]:
    assert main(["trace", str(path), "--ids", ",".join(str(int(i)) for i in ids),
                 "--out", str(out), "--what", "routing"]) == 0
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", NAMES)
def test_trace_shows_routing_as_computed(name, tiny_model_factory, tmp_path):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    got = run_trace(tm.gguf["f32"], ref["ids"], tmp_path / "t.npz")
    model = load_model(tm.gguf["f32"])
    r = model.router
    k, T = r.n_used, len(ref["ids"])
    overruled = 0  # tokens where an expert with a lower router_probs score was chosen
    for j, layer in enumerate(int(i) for i in ref["moe_layers"]):
        probs, ids = got[f"router_probs.{layer}"], got[f"topk_ids.{layer}"]
        np.testing.assert_allclose(probs, ref_probs(name, ref["router_logits"][j]),
                                   rtol=0, atol=1e-5)
        np.testing.assert_array_equal(np.sort(ids, 1), np.sort(ref["experts"][j], 1))

        select = got[f"select_scores.{layer}"]                                  # [T, E]
        assert select.dtype == np.float32 and select.shape == probs.shape
        np.testing.assert_allclose(select, probs + hf_bias(tm, layer), rtol=0, atol=1e-5)
        ranked = select.astype(np.float64)
        if r.n_groups > 1:
            kept = got[f"groups_kept.{layer}"]                                  # [T, Gu]
            assert kept.dtype == np.int32 and kept.shape == (T, r.n_groups_used)
            groups = ranked.reshape(T, r.n_groups, -1)
            group_scores = np.sort(groups, -1)[..., -2:].sum(-1)               # [T, G]
            best = np.argsort(-group_scores, 1, kind="stable")[:, :r.n_groups_used]
            np.testing.assert_array_equal(np.sort(kept, 1), np.sort(best, 1))
            size = r.n_expert // r.n_groups
            assert np.isin(ids // size, kept).all(), "an expert outside the kept groups"
            dropped = np.ones((T, r.n_groups), bool)
            np.put_along_axis(dropped, kept.astype(np.int64), False, 1)
            ranked = np.where(np.repeat(dropped, size, 1), -np.inf, ranked)
        else:
            assert f"groups_kept.{layer}" not in got
        # the chosen experts are the best k of the bias-corrected, group-masked scores, in order
        np.testing.assert_array_equal(ids, np.argsort(-ranked, 1, kind="stable")[:, :k])
        overruled += int((np.sort(ids, 1) != np.sort(np.argsort(-probs, 1)[:, :k], 1))
                         .any(1).sum())
    assert overruled > 0, "the bias / groups never changed a choice: the trace shows nothing"


def test_trace_has_no_selection_arrays_without_a_bias(tiny_model_factory, tmp_path):
    tm = tiny_model_factory("qwen3moe")
    got = run_trace(tm.gguf["f32"], tm.load_ref()["ids"], tmp_path / "t.npz")
    assert any(key.startswith("topk_ids.") for key in got)
    assert not any(key.startswith(("select_scores.", "groups_kept.")) for key in got)


# ----------------------------------------------------------------------------- vs llama.cpp

@pytest.mark.parametrize("name", NAMES)
def test_greedy_32_matches_llama_cpp(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    prompt = [int(i) for i in tm.load_ref()["greedy_prompt"]]
    model = load_model(tm.gguf["f32"])
    cache = model.new_cache(len(prompt) + 33)
    logits = model.forward(torch.tensor(prompt), cache, 0)
    ours, pos = [], len(prompt)
    for _ in range(32):
        ours.append(int(logits[-1].argmax()))
        logits = model.forward(torch.tensor(ours[-1:]), cache, pos)
        pos += 1
    assert ours == llama_cpp_greedy(tm.gguf["f32"], prompt, 32)


@pytest.mark.parametrize("name", NAMES)
def test_f16_matches_llama_cpp(name, tiny_model_factory):
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    ours = forward(load_model(tm.gguf["f16"]), ids)
    assert max_rel_err(ours, llama_cpp_logits(tm.gguf["f16"], ids)) <= 5e-3


def routing_margin(model, step) -> np.ndarray:
    """Per token, the smallest gap (over MoE layers) between the last chosen and the first
    rejected ranking score, or between the last kept and first dropped expert group: where it
    is tiny, rounding the router's input to 8 bits (llama.cpp's q8_0 dot products) may flip a
    choice, and a flipped expert moves the logits far more than rounding does."""
    r = model.router
    out = np.full(step.n_tokens, np.inf)
    for layer in model.moe_layers:
        s = step.get("moe_select_scores", layer)
        s = (step.get("moe_probs", layer) if s is None else s).astype(np.float64)
        T = s.shape[0]
        if r.n_groups > 1:
            gs = -np.sort(-np.sort(s.reshape(T, r.n_groups, -1), -1)[..., -2:].sum(-1), 1)
            out = np.minimum(out, gs[:, r.n_groups_used - 1] - gs[:, r.n_groups_used])
            kept = step.get("moe_groups_kept", layer).astype(np.int64)
            dropped = np.ones((T, r.n_groups), bool)
            np.put_along_axis(dropped, kept, False, 1)
            s = np.where(np.repeat(dropped, r.n_expert // r.n_groups, 1), -np.inf, s)
        s = -np.sort(-s, 1)
        out = np.minimum(out, s[:, r.n_used - 1] - s[:, r.n_used])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_q8_0_matches_llama_cpp(name, tiny_model_factory):
    """Away from routing near-ties, as close as the dense models' q8_0 tolerance (5e-2) allows,
    doubled for the tokens that attend to an earlier flipped one; most tokens qualify."""
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    model = load_model(tm.gguf["q8_0"])
    rec = Recorder(["moe_select_scores", "moe_groups_kept", "moe_probs"])
    ours = forward(model, ids, rec)
    theirs = llama_cpp_logits(tm.gguf["q8_0"], ids)
    rows = np.abs(ours.astype(np.float64) - theirs).max(1) / np.abs(theirs).max()  # [T]
    clear = routing_margin(model, rec.last) >= 5e-3
    assert clear.sum() >= 0.75 * len(ids)
    assert rows[clear].max() <= 1e-1
    assert np.median(rows[clear]) <= 5e-2


# ----------------------------------------------------------------------------- llmlens info

@pytest.mark.parametrize("name, want", [
    ("glm4moe", {"Experts (total / used / shared)": "8 / 2 / 1", "Expert gating": "sigmoid",
                 "Expert weights": "renormalised to sum 1, scaled x2.5",
                 "Expert groups": "4, best 2 used",
                 "Selection bias": "yes (ranks experts, not their weights)"}),
    ("ernie4_5_moe", {"Experts (total / used / shared)": "8 / 2 / 2", "Expert gating": "softmax",
                      "Expert weights": "renormalised to sum 1",
                      "Selection bias": "yes (ranks experts, not their weights)"}),
    ("deepseek2_v3", {"Expert gating": "sigmoid", "Expert groups": "4, best 2 used",
                   "Expert weights": "renormalised to sum 1, scaled x2.5"}),
    ("qwen2moe", {"Expert gating": "softmax", "Expert weights": "as scored",
                  "Selection bias": "none"}),
])
def test_info_shows_routing_hyperparameters(name, want, tiny_model_factory, capsys):
    tm = tiny_model_factory(name)
    rows = dict(summarize(open_gguf(tm.gguf["q8_0"])).display_rows())
    assert {key: rows.get(key) for key in want} == want
    if name == "ernie4_5_moe":
        assert "Expert groups" not in rows
    assert main(["info", str(tm.gguf["q8_0"])]) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in want.values())
