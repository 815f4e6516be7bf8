"""Clips longer than one window (audiocraft's sliding-window extension), on tiny checkpoints with a short
window: the API's result equals the windows run by hand through the single-window generator, each window
prompted by the previous window's last (window - stride) frames. Any off-by-one frame in the overlap changes
the prompts and so the sampled tokens."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.generate import MusicGen, window_seed
from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_codes
from mlx_audio_generate.musicgen.longform import Window, plan_windows

PROMPTS = ["lofi piano with warm vinyl crackle", "dark techno beat"]
SEED = 7
# 0.2 s window = 10 frames, 0.12 s stride = 6 frames (4 frames of overlap), 0.5 s = 25 frames.
WINDOW, STRIDE, SECONDS = 0.2, 0.12, 0.5
TEMPERATURE = 0.3


def test_plan_matches_audiocraft_loop():
    assert plan_windows(25, 10, 6) == [Window(0, 0, 10), Window(6, 4, 6), Window(12, 4, 6), Window(18, 4, 3)]
    assert plan_windows(25, 10, 6, prompt_frames=5) == [
        Window(0, 5, 5),
        Window(6, 4, 6),
        Window(12, 4, 6),
        Window(18, 4, 3),
    ]
    assert plan_windows(10, 10, 6, prompt_frames=3) == [Window(0, 3, 7)]  # fits: one plain window
    assert plan_windows(1550, 1500, 900) == [Window(0, 0, 1500), Window(900, 600, 50)]  # 31 s, defaults
    with pytest.raises(UserError):
        plan_windows(25, 10, 10)


def by_hand(model: MusicGen, windows, opts, audio_prompt=None, melody=None) -> np.ndarray:
    """Windows written out: (new frames, prompt from the previous window) -> the whole code sequence."""
    lm = model.model.lm
    states, mask = model.encode_text(PROMPTS)
    prompt = None
    if audio_prompt is not None:
        prompt = mx.broadcast_to(model.encode_audio(audio_prompt), (2, lm.config.num_codebooks, 5))
    pieces = [] if prompt is None else [prompt]
    for i, (offset, new) in enumerate(windows):
        chroma = None
        if melody is not None:  # audiocraft: the melody from the window's start, wrapped, one window long
            chroma = model.melody_chroma(melody[(offset * 640 + np.arange(6400)) % len(melody)])
        codes = generate_codes(
            lm, states, mask, new, opts, key=window_seed(SEED, i), prompt_codes=prompt, chroma=chroma
        )
        pieces.append(codes[:, :, codes.shape[2] - new :])
        prompt = codes[:, :, 6:]  # the last window - stride = 4 frames
    return np.array(mx.concatenate(pieces, axis=2))


@pytest.mark.parametrize("case", ["mono", "stereo-prompt", "melody"])
def test_long_clip_equals_windows_run_by_hand(case, request):
    name = {"mono": "musicgen_converted", "stereo-prompt": "musicgen_stereo_converted"}
    model = MusicGen.from_pretrained(request.getfixturevalue(name.get(case, "melody_converted")))
    # sampled, so the per-window keys matter too; a low temperature so the context (the prompt frames) sways
    # the draws of a tiny random model, whose logits are nearly flat
    opts = SamplingOptions(temperature=TEMPERATURE, top_k=250, guidance_scale=3.0)
    kw = {}
    windows = [(0, 10), (6, 6), (12, 6), (18, 3)]
    if case == "stereo-prompt":
        t = np.arange(3000) / 32000  # 3000 samples -> 5 frames
        kw["audio_prompt"] = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(
            np.float32
        )
        windows[0] = (0, 5)
    if case == "melody":
        t = np.arange(4800) / 32000  # shorter than a window: wraps around
        kw["melody"] = (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 660 * t * t)).astype(np.float32)
    expected = by_hand(model, windows, opts, **kw)
    steps = []
    got = model.generate_tokens(
        PROMPTS,
        seconds=SECONDS,
        seed=SEED,
        temperature=TEMPERATURE,
        window_seconds=WINDOW,
        extend_stride=STRIDE,
        progress=lambda d, n: steps.append((d, n)),
        **kw,
    )
    assert got.shape == expected.shape == (2, model.model.lm.config.num_codebooks, 25)
    np.testing.assert_array_equal(np.array(got), expected)
    assert steps[-1][0] == steps[-1][1] == sum(new + 3 for _, new in windows)  # one bar across windows
    if case == "stereo-prompt":
        np.testing.assert_array_equal(
            expected[:, :, :5], np.broadcast_to(model.encode_audio(kw["audio_prompt"]), (2, 8, 5))
        )
    if case == "mono":  # audio: the whole sequence decoded at once, cut to the length asked for
        audio = model.generate(
            PROMPTS,
            seconds=0.49,
            seed=SEED,
            temperature=TEMPERATURE,
            window_seconds=WINDOW,
            extend_stride=STRIDE,
        )
        ref = np.array(model.decode_codes(mx.array(expected)))[..., : round(0.49 * 32000)]
        np.testing.assert_array_equal(audio, ref)


def test_one_window_clip_is_the_plain_generation(musicgen_converted):
    model = MusicGen.from_pretrained(musicgen_converted)
    opts = SamplingOptions(top_k=250, guidance_scale=3.0)
    states, mask = model.encode_text(["lofi"])
    plain = generate_codes(model.model.lm, states, mask, 10, opts, key=SEED)
    got = model.generate_tokens("lofi", seconds=0.2, seed=SEED, window_seconds=WINDOW, extend_stride=STRIDE)
    np.testing.assert_array_equal(np.array(got), np.array(plain))


@pytest.mark.parametrize("stride", [0.0, -1.0, 0.2, 0.5, float("nan"), 0.001])
def test_bad_extend_stride(musicgen_converted, stride):
    model = MusicGen.from_pretrained(musicgen_converted)
    with pytest.raises(UserError, match="stride"):
        model.generate("x", seconds=0.5, window_seconds=WINDOW, extend_stride=stride)
    with pytest.raises(UserError, match="window"):
        model.generate("x", seconds=0.5, window_seconds=0.0)
