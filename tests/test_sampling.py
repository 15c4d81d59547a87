"""Sampling filters (pure functions) and samplers: each filter against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sampling import (SamplingParams, apply_min_p, apply_repeat_penalty, apply_temperature,
                             apply_top_k, apply_top_p, make_generator, make_sampler)


def _kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(200, generator=torch.Generator().manual_seed(0)) * 3


def test_top_k_keeps_the_k_largest(logits):
    out = apply_top_k(logits, 7)
    assert _kept(out) == set(torch.argsort(logits, descending=True)[:7].tolist())
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits[kept])
    assert torch.equal(apply_top_k(logits, 0), logits)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, p):
    probs = torch.softmax(logits.double(), -1).numpy()
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order])
    n = int(np.searchsorted(cum, p) + 1)  # the first prefix whose mass reaches p
    assert _kept(apply_top_p(logits, p)) == set(order[:n].tolist())
    assert torch.equal(apply_top_p(logits, 1.0), logits)


def test_min_p_is_relative_to_the_best_token(logits):
    probs = torch.softmax(logits, -1)
    out = apply_min_p(logits, 0.1)
    assert _kept(out) == set(torch.nonzero(probs >= 0.1 * probs.max()).flatten().tolist())


def test_repeat_penalty_follows_llama_cpp():
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0])
    out = apply_repeat_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, -1.0]  # positive / p, negative * p, others untouched
    assert logits.tolist() == [2.0, -2.0, 1.0, -1.0]  # pure: the input is not modified


def test_greedy_is_argmax_and_ignores_the_seed(logits):
    sampler = make_sampler(SamplingParams(temperature=0))
    for seed in range(3):
        assert sampler(logits, [], make_generator(seed)) == int(logits.argmax())


def test_same_seed_same_tokens(logits):
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    sampler = make_sampler(params)
    draws = lambda seed: [sampler(logits, [], g) for g in [make_generator(seed)] for _ in range(50)]  # noqa: E731
    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_samples_follow_the_tempered_distribution():
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    temp = 0.7
    sampler = make_sampler(SamplingParams(temperature=temp, top_k=0, top_p=1.0, min_p=0.0))
    gen = make_generator(0)
    n = 20000
    counts = np.bincount([sampler(logits, [], gen) for _ in range(n)], minlength=4) / n
    expected = torch.softmax(apply_temperature(logits, temp), -1).numpy()
    np.testing.assert_allclose(counts, expected, atol=0.015)


def test_filters_restrict_what_can_be_drawn(logits):
    params = SamplingParams(temperature=5.0, top_k=5, top_p=1.0, min_p=0.0)
    sampler = make_sampler(params)
    gen = make_generator(0)
    allowed = set(torch.argsort(logits, descending=True)[:5].tolist())
    drawn = {sampler(logits, [], gen) for _ in range(300)}
    assert drawn <= allowed and len(drawn) > 1
    # the penalty applies over the last repeat_last_n tokens of the history only
    best = int(logits.argmax())
    penal = make_sampler(SamplingParams(temperature=0, repeat_penalty=1e9, repeat_last_n=2))
    assert penal(logits, [best, 0, 1], gen) == best
    assert penal(logits, [0, best], gen) != best
