"""The dense engine against independent references.

Tiny random models (tests/fixtures/tiny_models.py) per architecture:
  * f32 GGUF: our logits vs transformers' float32 logits at every position (1e-4 relative),
    batched and token-by-token through the KV cache;
  * f16 / q8_0 GGUF: vs llama.cpp on the same file, within what those types' arithmetic allows
    (llama.cpp rounds activations to f16 / 8 bits before its dot products; we do not);
  * greedy 32 tokens equal to llama.cpp's, and to transformers' recorded greedy continuation.
The real default model (Gemma 3 270M Q4_K_M) vs llama.cpp: teacher-forced top-1 agreement on
English text, and greedy continuations.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from engine.models.base import load_model
from tests.fixtures.llama_cpp_ref import no_repack as _no_repack
from tests.fixtures.tiny_models import max_rel_err, tiny_model_factory  # noqa: F401 (fixture)

DENSE = ("llama", "llama3_rope", "mistral", "qwen2", "qwen3", "gemma3")
# llama.cpp rounds activations to f16 (f16 weights) or to 8-bit blocks (q8_0 weights) before
# each dot product; we multiply exactly. Measured on these models: f32 ~1e-6, f16 ~1e-3,
# q8_0 3-4e-2 (their random weights are large); a wrong kernel or layout gives errors of O(1).
LLAMA_CPP_TOL = {"f32": 1e-4, "f16": 5e-3, "q8_0": 5e-2}
# ggml's CPU GELU reads an f16 lookup table (GGML_GELU_FP16): ~3e-4 relative on gemma3 at f32,
# where transformers and we agree to 1e-6.
GELU_F32_TOL = 1e-3


# -- llama.cpp reference ------------------------------------------------------------------------



def _llama(path, n_ctx: int):
    from llama_cpp import Llama

    with _no_repack():
        # f32 KV cache: llama.cpp's default f16 cache alone costs ~1e-3 relative error.
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                     logits_all=True, n_threads=2, n_threads_batch=2, type_k=0, type_v=0,
                     verbose=False)


def _llama_logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval([int(i) for i in ids])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _llama_greedy(llm, prompt, n: int) -> list[int]:
    llm.reset()
    llm.eval([int(i) for i in prompt])
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


# -- our engine ---------------------------------------------------------------------------------

def _logits(model, ids) -> np.ndarray:
    return model.forward(torch.tensor(ids), model.new_cache(len(ids)), 0).numpy()


def _logits_stepwise(model, ids, first: int) -> np.ndarray:
    """A batched prompt of `first` tokens, then one token per forward through the cache."""
    cache = model.new_cache(len(ids))
    rows = [model.forward(torch.tensor(ids[:first]), cache, 0).numpy()]
    rows += [model.forward(torch.tensor(ids[i:i + 1]), cache, i).numpy()
             for i in range(first, len(ids))]
    return np.concatenate(rows)


def _greedy(model, prompt, n: int) -> list[int]:
    cache = model.new_cache(len(prompt) + n)
    logits = model.forward(torch.tensor(prompt), cache, 0, all_logits=False)
    out = []
    for i in range(n):
        out.append(int(logits[-1].argmax()))
        logits = model.forward(torch.tensor(out[-1:]), cache, len(prompt) + i)
    return out


# -- tiny models --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DENSE)
def test_f32_matches_transformers(tiny_model_factory, name):
    tm = tiny_model_factory(name)
    ref = tm.load_ref()
    model = load_model(tm.gguf["f32"])
    assert model.gguf.architecture == tm.arch
    ids = ref["ids"]
    batched = _logits(model, ids)
    assert batched.shape == ref["logits"].shape
    assert max_rel_err(batched, ref["logits"]) <= 1e-4
    stepwise = _logits_stepwise(model, ids, first=3)
    assert max_rel_err(stepwise, ref["logits"]) <= 1e-4
    # transformers' greedy continuation (no cache) from its recorded prompt
    prompt, greedy = list(ref["greedy_prompt"]), list(ref["greedy"])
    assert _greedy(model, prompt, len(greedy)) == greedy


@pytest.mark.parametrize("outtype", ("f32", "f16", "q8_0"))
@pytest.mark.parametrize("name", DENSE)
def test_matches_llama_cpp(tiny_model_factory, name, outtype):
    tm = tiny_model_factory(name)
    ids = tm.load_ref()["ids"]
    model = load_model(tm.gguf[outtype])
    llm = _llama(tm.gguf[outtype], 64)
    try:
        ref = _llama_logits(llm, ids)
        tol = LLAMA_CPP_TOL[outtype]
        if outtype == "f32" and tm.arch == "gemma3":
            tol = GELU_F32_TOL
        assert max_rel_err(_logits(model, ids), ref) <= tol
        if outtype == "f32":
            prompt = [int(i) for i in ids[:8]]
            assert _greedy(model, prompt, 32) == _llama_greedy(llm, prompt, 32)
    finally:
        llm.close()


def test_recorded_attention_is_causal_and_windowed(tiny_model_factory):
    """attn_probs rows sum to 1, never look ahead, and sliding layers see only the window."""
    from engine.trace import Recorder

    tm = tiny_model_factory("gemma3")
    model = load_model(tm.gguf["f32"])
    ids = tm.load_ref()["ids"]
    rec = Recorder(["attn_probs"])
    cache = model.new_cache(len(ids))
    with_rec = model.forward(torch.tensor(ids), cache, 0, rec).numpy()
    # recording takes the explicit-softmax path; the logits must not change
    assert max_rel_err(with_rec, _logits(model, ids)) <= 1e-5
    T, window = len(ids), model.config.sliding_window
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    for layer in range(model.config.n_layer):
        p = rec.last.get("attn_probs", layer)
        assert p.shape == (model.config.n_head, T, T)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        visible = (k <= q) & ((q - k < window) if model.config.is_local(layer) else True)
        assert np.all(p[:, ~visible] == 0)
    # a decode step records [H, 1, S] over every cached position
    model.forward(torch.tensor(ids[:1]), cache, T - 1, rec)
    assert rec.last.get("attn_probs", 5).shape == (model.config.n_head, 1, T)


# -- the real default model ---------------------------------------------------------------------

ENGLISH = (
    "The history of the city begins in the Roman period, when a small settlement grew up on an "
    "island in the river. Over the following centuries it became a centre of trade and learning, "
    "and by the twelfth century its schools attracted students from across Europe. The cathedral, "
    "begun in 1163, took nearly two hundred years to complete. During the Revolution the city was "
    "the stage for many of the events that changed the country, and in the nineteenth century it "
    "was rebuilt with wide boulevards, parks and new bridges. Today it is known for its museums, "
    "its food and its architecture, and it receives millions of visitors every year. Scientists "
    "have long studied how plants convert sunlight into chemical energy. In photosynthesis, light "
    "is absorbed by chlorophyll, and the energy is used to split water molecules, releasing "
    "oxygen. The hydrogen is then combined with carbon dioxide to build sugars, which the plant "
    "uses to grow. This process supports almost all life on Earth. When the first railways were "
    "built, many people feared that travelling at such speeds would harm the human body. Within a "
    "few decades, however, trains had become the most common way to cross the country, and towns "
    "that lay along the new lines grew quickly while others declined."
)
PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "Water boils at a temperature of",
)


@pytest.fixture(scope="module")
def real():
    from engine.default_model import default_model_path

    path = default_model_path()
    model = load_model(path, n_ctx=512)
    llm = _llama(path, 512)
    yield model, llm
    llm.close()


@pytest.fixture(scope="module")
def real_exact(real):
    """The default model with weights dequantized exactly (no 8-bit activation rounding)."""
    from engine.default_model import default_model_path

    _, llm = real
    return load_model(default_model_path(), n_ctx=512, exact=True), llm


def test_real_model_teacher_forced(real):
    """Top-1 agreement with llama.cpp over English text.

    llama.cpp's quantized matmuls round activations to 8 bits, and on this model that alone
    moves logits by ~2 (of ~40): llama.cpp does not agree with itself between a batched and a
    token-by-token evaluation at more than ~95% of positions. So the bar is: we agree with
    llama.cpp's batched logits at least as well as its own token-by-token logits do, every
    disagreement is a near tie for llama.cpp, and our errors are no larger than its own.
    """
    model, llm = real
    ids = llm.tokenize(ENGLISH.encode(), add_bos=True, special=True)
    assert len(ids) >= 240
    ref = _llama_logits(llm, ids)
    llm.reset()
    for t in ids:
        llm.eval([t])
    ref_seq = np.array(llm.scores[: len(ids)], dtype=np.float32)
    ours = _logits(model, ids)
    agree = (ours.argmax(-1) == ref.argmax(-1)).mean()
    self_agree = (ref_seq.argmax(-1) == ref.argmax(-1)).mean()
    print(f"top-1 agreement {agree:.3f} (llama.cpp with itself {self_agree:.3f}); max |diff| "
          f"{np.abs(ours - ref).max():.2f} (llama.cpp with itself {np.abs(ref_seq - ref).max():.2f})")
    assert agree >= min(0.99, self_agree - 0.01), (agree, self_agree)
    top2 = np.sort(ref, -1)[:, -2:]
    margins = (top2[:, 1] - top2[:, 0])[ours.argmax(-1) != ref.argmax(-1)]
    assert np.all(margins < 0.5), margins
    assert np.abs(ours - ref).max() <= 1.5 * np.abs(ref_seq - ref).max()


def test_real_model_greedy(real_exact):
    """Greedy 32-token continuations: each equals llama.cpp's, or first differs where llama.cpp's
    two candidates are tied within 0.1 logits; at least 3 of the 5 are identical.

    (4 of 5 is out of reach of any exact computation: with llama.cpp's 8-bit activation
    rounding, two of these prompts diverge at token 15 on ties of 0.09 and 0.06 logits.)
    Run on exact weights: the packed path rounds activations to 8 bits too, but not at the same
    points as llama.cpp, which moves near-ties by up to ~0.15 logits; its agreement with
    llama.cpp is checked position by position in test_real_model_teacher_forced.)"""
    model, llm = real_exact
    same = 0
    for text in PROMPTS:
        prompt = llm.tokenize(text.encode(), add_bos=True, special=True)
        ours, theirs = _greedy(model, prompt, 32), _llama_greedy(llm, prompt, 32)
        if ours == theirs:
            same += 1
            continue
        k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        ref = _llama_logits(llm, prompt + theirs[:k])[-1]
        gap = abs(float(ref[ours[k]] - ref[theirs[k]]))
        print(f"{text!r}: first divergence at token {k}, llama.cpp logit gap {gap:.3f}")
        assert gap <= 0.1, (text, k, gap)
    assert same >= 3
