"""The MusicGen decode-step paths give the same numbers as the GEMM path the parity tests check.

On the GPU a decode step (one position per row) runs its linears as batched matrix-vector products and its
layers through compiled parts around each self-attention (`MusicgenDecoder.matvec` / `.fused`, see
model.py): a decode step there is bound by host time per kernel. The CPU keeps the GEMM path by default, so
these tests force each path on the CPU and compare step logits (fp32) and greedy tokens with the default
path, which test_musicgen_e2e / test_melody hold token-identical to transformers. Cases: a padded batch
(masked cross-attention), a single prompt (no mask: fused SDPA), stereo, melody (no cross-attention, a
prefix), and a quantized LM (the compiled parts are skipped, matvec falls back to the quantized layer).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_audio_generate.musicgen import model as model_mod
from mlx_audio_generate.musicgen.fused_decode import fused_args, is_dense
from mlx_audio_generate.musicgen.generate import MusicGen
from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_codes

PATHS = {"gemm": (False, False), "matvec": (True, False), "matvec-fused": (True, True)}


@pytest.fixture
def use_path(monkeypatch):
    """Set a decoder's path and count the fused layer calls (so a silently skipped path fails the test)."""
    calls = []
    original = model_mod.fused_layers

    def spy(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    monkeypatch.setattr(model_mod, "fused_layers", spy)

    def set_path(dec, path):
        dec.matvec, dec.fused = PATHS[path]
        calls.clear()
        return calls

    return set_path


def step_logits(lm, states, mask, steps=5, chroma=None):
    """Logits of a prefill + `steps` cached decode steps fed fixed codes, with guidance rows (2B)."""
    dec = lm.decoder
    cond = lm.conditioning(states, mask, True, chroma)
    rows = 2 * states.shape[0]
    k = lm.config.num_codebooks
    cache = dec.make_cache(rows, cond.prefix_len + steps + 2)
    rng = np.random.default_rng(0)
    col = mx.full((rows, k, 1), lm.config.bos_token_id, dtype=mx.int32)
    out = [dec(col, cond.cross_kv, cond.cross_mask, cache, 0, last_only=True, prefix=cond.prefix)]
    for t in range(steps):
        col = mx.array(rng.integers(0, lm.config.vocab_size, (rows, k, 1)), dtype=mx.int32)
        out.append(dec(col, cond.cross_kv, cond.cross_mask, cache, cond.prefix_len + 1 + t, last_only=True))
    return np.array(mx.concatenate(out, axis=2))


def assert_paths_agree(lm, states, mask, use_path, chroma=None, fused_layers=True):
    dec = lm.decoder
    got = {}
    for path in PATHS:
        calls = use_path(dec, path)
        got[path] = step_logits(lm, states, mask, chroma=chroma)
        # one fused pass per one-position call: the 5 steps, and the BOS prefill unless a melody prefix
        # makes it longer
        single = 5 + (chroma is None)
        expect = single if path == "matvec-fused" and fused_layers else 0
        assert len(calls) == expect, (path, len(calls))
    dec.matvec, dec.fused = None, True
    ref = got["gemm"]
    for path, logits in got.items():
        err = np.abs(logits - ref).max() / np.abs(ref).max()
        assert err <= 1e-5, (path, err)


@pytest.fixture(scope="module")
def mono(musicgen_converted):
    return MusicGen.from_pretrained(musicgen_converted)


@pytest.mark.parametrize("prompts", [["lofi piano with warm vinyl crackle", "dark techno beat"], ["lofi"]])
def test_step_logits_agree(mono, prompts, use_path):
    states, mask = mono.encode_text(prompts)
    masked = model_mod.cross_attention_mask(mono.model.lm.project_text(states, mask, True)[1]) is not None
    assert masked == (len(prompts) > 1)  # both cross-attention variants are covered
    assert_paths_agree(mono.model.lm, states, mask, use_path)


@pytest.mark.parametrize("sampling", ["greedy", "top-k"])
def test_tokens_agree(mono, musicgen_stereo_converted, use_path, sampling):
    """Greedy and seeded top-k tokens; with matvec the guidance + sampling tail is compiled too."""
    options = SamplingOptions(top_k=1) if sampling == "greedy" else SamplingOptions(top_k=20, temperature=1.0)
    for model in (mono, MusicGen.from_pretrained(musicgen_stereo_converted)):
        states, mask = model.encode_text(["lofi piano with warm vinyl crackle", "dark techno beat"])
        lm = model.model.lm
        codes = {}
        for path in PATHS:
            calls = use_path(lm.decoder, path)
            codes[path] = np.array(generate_codes(lm, states, mask, 20, options, key=[3, 4]))
            assert bool(calls) == (path == "matvec-fused")
        lm.decoder.matvec, lm.decoder.fused = None, True
        for path in PATHS:
            np.testing.assert_array_equal(codes[path], codes["gemm"])


def test_melody_step_logits_agree(melody_converted, use_path):
    model = MusicGen.from_pretrained(melody_converted)
    states, mask = model.encode_text(["lofi piano with warm vinyl crackle", "dark techno beat"])
    chroma = mx.array(np.random.default_rng(2).random((1, 20, 12)), dtype=mx.float32)
    assert_paths_agree(model.model.lm, states, mask, use_path, chroma=chroma)


def test_quantized_layers_fall_back(musicgen_converted, use_path):
    model = MusicGen.from_pretrained(musicgen_converted)
    lm = model.model.lm
    # the tiny LM is 48 wide: only fc2 (input 96) takes group 32, so layers mix dense and quantized linears
    nn.quantize(lm.decoder, group_size=32, bits=8, class_predicate=lambda p, m: p.endswith("fc2"))
    assert isinstance(lm.decoder.layers[0].fc2, nn.QuantizedLinear)
    assert not is_dense(lm.decoder.layers[0])
    assert not fused_args(lm.decoder, None, None).dense
    states, mask = model.encode_text(["lofi"])
    assert_paths_agree(lm, states, mask, use_path, fused_layers=False)


def test_gpu_only_by_default(mono):
    dec = mono.model.lm.decoder
    assert dec.matvec is None
    assert dec.use_matvec() == (mx.default_device() == mx.gpu)
