"""Token sampling: greedy, temperature, top-k, top-p (nucleus) and seeded determinism."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.sampling import sample_tokens, top_k_filter, top_p_filter

N_DRAWS = 4000


def _draws(logits_row: np.ndarray, seed: int = 0, **kw) -> np.ndarray:
    """N_DRAWS samples from one distribution, drawn as one batch with one key."""
    batch = mx.array(np.tile(logits_row[None], (N_DRAWS, 1)).astype(np.float32))
    return np.array(sample_tokens(batch, mx.random.key(seed), **kw))


def test_greedy_is_argmax():
    logits = mx.array(np.random.default_rng(0).normal(size=(16, 50)).astype(np.float32))
    expected = np.argmax(np.array(logits), axis=-1)
    key = mx.random.key(1)
    assert (np.array(sample_tokens(logits, key, top_k=1)) == expected).all()
    assert (np.array(sample_tokens(logits, key, temperature=0.0, top_k=250, top_p=0.9)) == expected).all()


def test_top_p_never_leaves_the_nucleus():
    # Known mass: sorted probabilities 0.5, 0.3, 0.15, 0.05 placed at shuffled token ids.
    probs = np.zeros(8)
    probs[[5, 2, 7, 0]] = [0.5, 0.3, 0.15, 0.05]
    probs[[1, 3, 4, 6]] = 1e-12
    logits = np.log(probs)
    for top_p, nucleus in ((0.45, {5}), (0.7, {5, 2}), (0.85, {5, 2, 7}), (0.99, {5, 2, 7, 0})):
        got = _draws(logits, top_p=top_p)
        assert set(np.unique(got)) == nucleus, (top_p, np.unique(got))
    # the kept tokens keep their relative odds: 0.5 : 0.3 renormalised -> 0.625
    got = _draws(logits, top_p=0.7)
    assert abs(np.mean(got == 5) - 0.625) < 0.03


def test_top_k_restricts_support():
    logits = np.random.default_rng(1).normal(size=64)
    top = set(np.argsort(-logits)[:5])
    got = _draws(logits, top_k=5, temperature=3.0)  # a hot temperature would otherwise spread widely
    assert set(np.unique(got)) <= top and len(np.unique(got)) == 5


def test_filters_match_transformers_warpers():
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(2).normal(size=(6, 128)).astype(np.float32) * 3
    for p in (0.1, 0.5, 0.9):
        ref = TopPLogitsWarper(p)(None, torch.from_numpy(logits.copy())).numpy()
        ours = np.array(top_p_filter(mx.array(logits), p))
        assert (np.isinf(ref) == np.isinf(ours)).all()
    for k in (1, 10, 50):
        ref = TopKLogitsWarper(k)(None, torch.from_numpy(logits.copy())).numpy()
        ours = np.array(top_k_filter(mx.array(logits), k))
        assert (np.isinf(ref) == np.isinf(ours)).all()


def test_frequencies_follow_softmax_and_temperature_sharpens():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    freq = np.bincount(_draws(logits), minlength=5) / N_DRAWS
    p = np.exp(logits) / np.exp(logits).sum()
    assert np.abs(freq - p).max() < 0.03
    top = [np.mean(_draws(logits, temperature=t) == 0) for t in (2.0, 1.0, 0.5, 0.25)]
    assert top == sorted(top) and top[-1] > 0.95
    expected = math.exp(2.0 / 0.5) / sum(math.exp(x / 0.5) for x in logits)
    assert abs(top[2] - expected) < 0.03


def test_seeded_determinism():
    logits = mx.array(np.random.default_rng(3).normal(size=(32, 100)).astype(np.float32))
    for kw in ({}, {"top_k": 20}, {"top_p": 0.8}, {"top_k": 50, "top_p": 0.9, "temperature": 0.7}):
        a = np.array(sample_tokens(logits, mx.random.key(7), **kw))
        b = np.array(sample_tokens(logits, mx.random.key(7), **kw))
        c = np.array(sample_tokens(logits, mx.random.key(8), **kw))
        assert (a == b).all() and (a != c).any()


def test_bad_arguments():
    logits = mx.zeros((1, 4))
    for kw in ({"temperature": -1.0}, {"top_k": -2}, {"top_p": 1.5}):
        with pytest.raises(UserError):
            sample_tokens(logits, mx.random.key(0), **kw)
