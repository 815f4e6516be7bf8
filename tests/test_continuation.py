"""Audio continuation against transformers: the audio prompt is EnCodec-encoded (stereo: L and R separately,
interleaved), the codes prompt the decoder, and greedy tokens and audio equal transformers' `generate` given
the same audio (`input_values`; melody: `decoder_input_ids` from its codec, which its generate requires)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.chroma import chroma_features
from mlx_audio_generate.musicgen.generate import MusicGen
from tests.reference import require

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch", "transformers")
from transformers import AutoTokenizer  # noqa: E402

PROMPTS = ["lofi piano with warm vinyl crackle", "dark techno beat"]
SR = 32000


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def prompt_audio(channels: int, samples: int = 8000) -> np.ndarray:
    t = np.arange(samples) / SR
    rng = np.random.default_rng(channels)
    chans = [np.sin(2 * np.pi * f * t) * 0.5 + 0.05 * rng.standard_normal(samples) for f in (220.0, 330.0)]
    return np.stack(chans[:channels]).astype(np.float32)


def hf_generate(model, src, new_frames, **kw):
    """transformers' greedy CFG generate -> (codes (B, K, F) hooked at the codec, audio)."""
    tok = AutoTokenizer.from_pretrained(src)
    inputs = tok(PROMPTS, padding=True, return_tensors="pt")
    kc = model.decoder.config.num_codebooks // model.decoder.config.audio_channels
    calls = []
    original = model.audio_encoder.decode

    def hook(codes, *a, **k):
        calls.append(codes.clone())
        return original(codes, *a, **k)

    model.audio_encoder.decode = hook
    try:
        with torch.no_grad():
            audio = model.generate(
                **inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=new_frames + kc - 1, **kw
            )
    finally:
        del model.audio_encoder.decode
    if len(calls) == 1:
        return calls[0][0].numpy(), audio.numpy()
    left, right = calls[0][0].numpy(), calls[1][0].numpy()
    codes = np.empty((left.shape[0], 2 * left.shape[1], left.shape[2]), left.dtype)
    codes[:, 0::2], codes[:, 1::2] = left, right
    return codes, audio.numpy()


@pytest.mark.parametrize("stereo", [False, True], ids=["mono", "stereo"])
def test_continuation_matches_transformers(stereo, request):
    from transformers import MusicgenForConditionalGeneration

    src = request.getfixturevalue("musicgen_stereo_dir" if stereo else "musicgen_dir")
    ours = MusicGen.from_pretrained(
        request.getfixturevalue("musicgen_stereo_converted" if stereo else "musicgen_converted")
    )
    hf = MusicgenForConditionalGeneration.from_pretrained(src).eval()
    audio = prompt_audio(2 if stereo else 1)  # 8000 samples -> 13 prompt frames
    total = 24
    values = torch.from_numpy(np.stack([audio, audio]))
    ref_codes, ref_audio = hf_generate(hf, src, total - 13, input_values=values)
    assert ref_codes.shape == (2, 8 if stereo else 4, total)

    codes = ours.generate_tokens(PROMPTS, seconds=total / 50, top_k=1, audio_prompt=audio)
    np.testing.assert_array_equal(np.array(codes), ref_codes)
    out = ours.generate(PROMPTS, seconds=total / 50, top_k=1, audio_prompt=audio)
    assert out.shape == ref_audio.shape == (2, 2 if stereo else 1, total * 640)
    assert rel_err(out, ref_audio) <= 1e-4
    # the prompt's own codes come first: what the codec makes of the prompt audio
    own = ours.encode_audio(audio)
    np.testing.assert_array_equal(
        np.array(codes)[:, :, :13], np.broadcast_to(np.array(own), (2, *own.shape[1:]))
    )


def test_melody_continuation_matches_transformers(melody_dir, melody_converted):
    from transformers import MusicgenMelodyForConditionalGeneration

    hf = MusicgenMelodyForConditionalGeneration.from_pretrained(melody_dir).eval()
    ours = MusicGen.from_pretrained(melody_converted)
    audio = prompt_audio(1, 6000)  # 10 frames
    melody = prompt_audio(2, 40000).mean(axis=0)
    chroma = chroma_features(melody)
    with torch.no_grad():  # the melody generate takes the prompt only as codes
        prompt_codes = hf.audio_encoder.encode(torch.from_numpy(audio)[None]).audio_codes[0]
    assert prompt_codes.shape == (1, 4, 10)
    ref_codes, ref_audio = hf_generate(
        hf,
        melody_dir,
        14,
        decoder_input_ids=prompt_codes.repeat(2, 1, 1).reshape(8, 10),
        input_features=torch.from_numpy(np.stack([chroma, chroma])),
    )
    codes = ours.generate_tokens(PROMPTS, seconds=24 / 50, top_k=1, audio_prompt=audio, melody=melody)
    np.testing.assert_array_equal(np.array(codes), ref_codes)


def test_prompt_files_are_resampled_and_downmixed(musicgen_converted, tmp_path):
    ours = MusicGen.from_pretrained(musicgen_converted)
    stereo16k = prompt_audio(2, 4000)  # 0.25 s at 16 kHz
    sf.write(tmp_path / "p.flac", stereo16k.T, 16000)
    from mlx_audio_generate.audio import read_audio

    as_read = read_audio(tmp_path / "p.flac", sample_rate=SR, channels=1)
    assert as_read.shape == (1, 8000)
    a = ours.generate_tokens("x", seconds=0.4, top_k=1, audio_prompt=tmp_path / "p.flac")
    b = ours.generate_tokens("x", seconds=0.4, top_k=1, audio_prompt=as_read)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert a.shape == (1, 4, 20)


def test_prompt_length_is_checked(musicgen_converted, musicgen_stereo_converted):
    ours = MusicGen.from_pretrained(musicgen_converted)
    with pytest.raises(UserError, match="shorter than --seconds"):
        ours.generate("x", seconds=0.2, audio_prompt=prompt_audio(1, 6400))  # 0.2 s: nothing left
    with pytest.raises(UserError, match="shorter than the 0.3 s window"):
        ours.generate("x", seconds=1.0, audio_prompt=prompt_audio(1, 9600), window_seconds=0.3)
    with pytest.raises(UserError, match="channels"):
        MusicGen.from_pretrained(musicgen_stereo_converted).generate(
            "x", seconds=0.5, audio_prompt=np.zeros((3, 800), np.float32)
        )
    # a mono prompt for a stereo checkpoint is used on both sides
    st = MusicGen.from_pretrained(musicgen_stereo_converted)
    codes = np.array(st.generate_tokens("x", seconds=0.3, top_k=1, audio_prompt=prompt_audio(1, 3200)))
    np.testing.assert_array_equal(codes[:, 0::2, :5], codes[:, 1::2, :5])
    assert mx.array(codes).shape == (1, 8, 15)
