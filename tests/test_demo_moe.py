"""The shipped demo MoE (engine/assets/demo-moe.gguf): a real trained model, measured here.

Every figure is recomputed from the file on held-out text (Jinja2 + Markdown sources, never
trained on), with our engine unless said otherwise:
- the file: DeepSeek-V2 layout, size, vocabulary, the `demo-moe` alias;
- held-out perplexity clearly below a bigram model fitted in the test on standard-library
  text (the training source) with the same tokenizer;
- every expert of every MoE layer is among the top-k of >= 1% of the tokens;
- the first-choice expert carries information about the token class (letters, digits, ...):
  mutual information well above the same statistic with the classes shuffled;
- llama.cpp (llama-cpp-python) agrees: teacher-forced top-1 >= 99%, and the same experts
  wherever the router has no near-tie (llama.cpp's choices read through its eval callback);
- `llmlens info demo-moe` and `llmlens generate demo-moe ...` run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.default_model import DEMO_MOE_NAME, demo_moe_path, resolve_model_path

REPO = Path(__file__).resolve().parents[1]
GGUF = REPO / "engine" / "assets" / "demo-moe.gguf"
WINDOW = 256          # the model's training context
N_WINDOWS = 4         # 1024 held-out tokens: enough for 1% of tokens per expert to mean something
NEAR_TIE = 2e-3       # router probability gap under which rounding may swap experts
PROB_TOL = NEAR_TIE / 2  # |our router probs - llama.cpp's| must stay under this (seen: 2e-4)


def _script_module(name: str):
    """A module of packaging/demo_moe (run as scripts there, so not importable as a package:
    `packaging` is also a PyPI package)."""
    path = REPO / "packaging" / "demo_moe" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"demo_moe_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stats():
    return _script_module("routing_stats")


@pytest.fixture(scope="module")
def loaded():
    from engine.gguf.reader import open_gguf
    from engine.models.base import load_model
    from engine.tokenizer import load_tokenizer

    gf = open_gguf(GGUF)
    model = load_model(gf, n_ctx=WINDOW)
    return model, load_tokenizer(gf)


@pytest.fixture(scope="module")
def heldout_ids(loaded) -> list[int]:
    """The first N_WINDOWS * WINDOW tokens of the held-out source, [BOS] doc [EOS] per file."""
    _, tok = loaded
    corpus = _script_module("corpus")
    ids: list[int] = []
    for doc in corpus.held_out_corpus().docs:
        ids += [tok.bos_id, *tok.encode(doc, add_special=False), tok.eos_id]
        if len(ids) >= N_WINDOWS * WINDOW:
            break
    return ids[:N_WINDOWS * WINDOW]


@pytest.fixture(scope="module")
def engine_run(loaded, heldout_ids, stats):
    model, _ = loaded
    return stats.engine_routing(model, heldout_ids, WINDOW)  # layers, topk [N, k] per layer, logits


def window_nll(logits: np.ndarray, ids: list[int]) -> float:
    """Mean NLL (nats) of tokens 1.. of each WINDOW-token window given its prefix."""
    lp = torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()   # [N, V]
    total, n = 0.0, 0
    for start in range(0, len(ids), WINDOW):
        w = ids[start:start + WINDOW]
        total -= lp[start + np.arange(len(w) - 1), w[1:]].sum()
        n += len(w) - 1
    return total / n


# ----------------------------------------------------------------------------- the file

def test_file_is_a_small_deepseek2_moe():
    from engine.gguf.reader import open_gguf

    assert resolve_model_path(DEMO_MOE_NAME) == demo_moe_path() == GGUF.resolve()
    assert GGUF.stat().st_size <= 25 * 2**20
    with open_gguf(GGUF) as gf:
        md = gf.metadata
        assert md["general.architecture"] == "deepseek2"
        assert 4 <= md["deepseek2.block_count"] <= 8
        assert 8 <= md["deepseek2.expert_count"] <= 16
        assert md["deepseek2.expert_used_count"] == 2
        assert md["deepseek2.expert_shared_count"] == 1
        assert md["deepseek2.attention.kv_lora_rank"] > 0
        assert md["tokenizer.ggml.model"] == "gpt2"
        assert md["tokenizer.ggml.pre"] == "deepseek-llm"
        assert 4000 <= len(md["tokenizer.ggml.tokens"]) <= 8192


def test_card_and_routing_summary_ship_with_the_model():
    assets = GGUF.parent
    card = (assets / "demo-moe.md").read_text()
    assert "bigram" in card and "PSF" in card and "BSD-3-Clause" in card
    assert (assets / "demo-moe-loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((assets / "demo-moe-routing.json").read_text())
    assert len(doc["layers"]) >= 3 and all(len(lr["first_share"]) >= 8 for lr in doc["layers"])


# ----------------------------------------------------------------------------- quality

def test_heldout_perplexity_beats_a_bigram(loaded, heldout_ids, engine_run):
    _, tok = loaded
    corpus = _script_module("corpus")
    # Bigram fitted here on ~1.5 MB of the training source with the same tokenizer; the card
    # reports the one fitted on all of it.
    train: list[int] = []
    for doc in corpus.training_corpus(seed=1234).docs:
        train += [tok.bos_id, *tok.encode(doc, add_special=False), tok.eos_id]
        if len(train) >= 400_000:
            break
    V = tok.n_vocab
    a, b = np.array(train[:-1]), np.array(train[1:])
    counts = np.bincount(a * V + b, minlength=V * V).reshape(V, V).astype(np.float64)
    uni = (np.bincount(train, minlength=V) + 1.0) / (len(train) + V)
    ev = np.array(heldout_ids)
    best_bigram = np.inf
    for alpha in (1, 3, 10, 30, 100):  # the bigram's best smoothing ON the held-out text
        p = (counts[ev[:-1], ev[1:]] + alpha * uni[ev[1:]]) / (counts[ev[:-1]].sum(1) + alpha)
        best_bigram = min(best_bigram, float(-np.log(p).mean()))
    nll = window_nll(engine_run[2], heldout_ids)
    assert np.exp(nll) < 0.6 * np.exp(best_bigram), (np.exp(nll), np.exp(best_bigram))


def test_every_expert_gets_tokens(engine_run):
    layers, topk, _ = engine_run
    n_expert = int(topk[0].max()) + 1
    for layer, ids in zip(layers, topk):
        share = np.bincount(ids.reshape(-1), minlength=n_expert) / ids.shape[0]   # any of top-k
        assert share.min() >= 0.01, f"layer {layer}: expert loads {np.round(share, 3)}"
        assert len(share) >= 8


def test_first_choice_expert_tracks_token_class(loaded, heldout_ids, engine_run, stats):
    _, tok = loaded
    layers, topk, _ = engine_run
    texts = stats.token_texts(tok, heldout_ids)
    summary = stats.routing_summary(layers, topk, texts, int(topk[0].max()) + 1)
    for lr in summary:
        assert lr.mi_bits > max(3 * lr.mi_shuffled_bits, lr.mi_shuffled_max_bits + 0.05), lr


# ----------------------------------------------------------------------------- vs llama.cpp

def test_llama_cpp_agrees(loaded, heldout_ids, stats):
    from engine.moe import collect_routing
    from engine.trace import Recorder

    model, _ = loaded
    ids = heldout_ids[:2 * WINDOW]
    windows = [ids[i:i + WINDOW] for i in range(0, len(ids), WINDOW)]
    rec = Recorder(names=("moe_topk_ids", "moe_topk_weights", "moe_probs"))
    ours = np.concatenate([model.forward(torch.tensor(w), model.new_cache(WINDOW), 0, rec).numpy()
                           for w in windows])                                  # [N, V]
    layers = list(model.moe_layers)
    k = model.config.n_expert_used
    theirs, their_experts, their_probs = stats.llama_cpp_run(GGUF, windows, layers, k)
    agree = float((ours.argmax(1) == theirs.argmax(1)).mean())
    assert agree >= 0.99, f"teacher-forced top-1 agreement {agree:.4f}"

    our_experts, _ = collect_routing(rec, layers)
    for li, layer in enumerate(layers):
        probs = np.concatenate([s.get("moe_probs", layer) for s in rec.steps])  # [N, E]
        top = np.sort(probs, 1)[:, ::-1]                                          # [N, E] desc
        clear_set = (top[:, k - 1] - top[:, k]) > NEAR_TIE    # the chosen SET is not a near-tie
        clear_first = (top[:, 0] - top[:, 1]) > NEAR_TIE      # nor is the first choice
        np.testing.assert_allclose(probs, their_probs[layer], rtol=0, atol=PROB_TOL)
        mine, theirs_l = our_experts[li], their_experts[layer]
        assert theirs_l.shape == mine.shape
        same_set = (np.sort(mine, 1) == np.sort(theirs_l, 1)).all(1)
        assert same_set[clear_set].all(), f"layer {layer}: {np.flatnonzero(~same_set & clear_set)}"
        assert (mine[:, 0] == theirs_l[:, 0])[clear_first].all(), f"layer {layer}"
        assert clear_set.mean() > 0.5  # the comparison is not vacuous


# ----------------------------------------------------------------------------- CLI

def test_cli_info(capsys):
    from app.cli import main

    assert main(["info", "demo-moe"]) == 0
    out = capsys.readouterr().out
    assert "deepseek2" in out and "ffn_gate_exps" in out


def test_cli_generate_is_greedy(capsys, loaded):
    from app.cli import main

    assert main(["generate", "demo-moe", "-p", "def ", "-n", "20", "--temperature", "0",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["text"] and len(doc["ids"]) >= 1
    # the same tokens as an argmax loop over the model the test loaded itself
    model, tok = loaded
    seq = list(doc["prompt_ids"])
    cache = model.new_cache(len(seq) + 21)
    logits = model.forward(torch.tensor(seq), cache, 0)
    want = []
    for _ in range(len(doc["ids"])):
        want.append(int(logits[-1].argmax()))
        logits = model.forward(torch.tensor(want[-1:]), cache, len(seq) + len(want) - 1)
    assert doc["ids"] == want
