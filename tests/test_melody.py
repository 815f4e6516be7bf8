"""MusicGen-Melody against transformers on a tiny checkpoint written by transformers itself.

Chroma equal to MusicgenMelodyFeatureExtractor's, teacher-forced logits (prefix conditioning, no
cross-attention) within 1e-4, greedy CFG tokens identical with and without a melody, audio equal, strict
conversion, and the melody checkpoint running text-only exactly as the reference does without a melody.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.chroma import ChromaConfig, chroma_features, normalized_chroma
from mlx_audio_generate.musicgen.generate import MusicGen
from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_codes
from mlx_audio_generate.musicgen.melody import MelodyLM
from tests.reference import require
from tests.reference.musicgen import melody_feature_extractor

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch", "transformers")

PROMPTS = ["lofi piano with warm vinyl crackle", "dark techno beat"]
SR = 32000


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def tones(seconds: float, seed: int = 0) -> np.ndarray:
    """A few slowly swelling sine tones (a C major-ish chord) plus noise: a clear but changing chroma."""
    t = np.arange(round(seconds * SR)) / SR
    notes = [261.63, 329.63, 392.0, 440.0, 493.88]
    x = sum(
        np.sin(2 * np.pi * f * t) * np.sin(2 * np.pi * (0.3 + 0.17 * i) * t) ** 2 for i, f in enumerate(notes)
    )
    return (x + 0.05 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    return melody_feature_extractor()


@pytest.fixture(scope="module")
def hf(melody_dir):
    from transformers import MusicgenMelodyForConditionalGeneration

    return MusicgenMelodyForConditionalGeneration.from_pretrained(melody_dir).eval()


@pytest.fixture(scope="module")
def ours(melody_converted):
    return MusicGen.from_pretrained(melody_converted)


@pytest.mark.parametrize("seconds", [0.3, 2.5, 31.0], ids=["shorter-than-fft", "short", "truncated"])
def test_chroma_matches_feature_extractor(extractor, seconds):
    x = tones(seconds)
    ref = extractor(x, sampling_rate=SR, return_tensors="pt")["input_features"][0].numpy()
    ours = chroma_features(x)
    assert ours.shape == ref.shape == (min(1 + len(x) // 4096, 235) if len(x) >= 16384 else 5, 12)
    np.testing.assert_array_equal(ours, ref)
    # the values before the argmax too (the reference's float32 pipeline rebuilt from its pieces)
    xx = x[: 30 * SR]
    if len(xx) < 16384:
        pad = 16384 - len(xx)
        xx = np.pad(xx, (pad // 2, pad - pad // 2))
    spec = extractor.spectrogram(torch.from_numpy(xx)[None]).squeeze(1)
    raw = torch.einsum("cf,...ft->...ct", extractor.chroma_filters, spec)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6)[0].T.numpy()
    assert rel_err(normalized_chroma(x), norm) <= 1e-5


def test_chroma_settings_come_from_the_preprocessor_config(melody_converted):
    assert (melody_converted / "preprocessor_config.json").is_file()
    assert ChromaConfig.from_folder(melody_converted) == ChromaConfig()
    silence = chroma_features(np.zeros(20000, np.float32))
    assert (silence.argmax(-1) == 0).all()  # zeros: bin 0, as the reference


def test_converter_is_strict_and_has_no_cross_attention(melody_dir, melody_converted, tmp_path):
    cfg = json.loads((melody_converted / "config.json").read_text())
    assert cfg["model_type"] == "musicgen_melody"
    model = MusicGen.from_pretrained(melody_converted)
    lm = model.model.lm
    assert isinstance(lm, MelodyLM) and model.is_melody
    assert lm.enc_to_dec_proj is not None and lm.audio_enc_to_dec_proj is not None
    assert not hasattr(lm.decoder.layers[0], "encoder_attn")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(melody_dir / "model.safetensors")
    for name, mutate in {
        "missing": lambda t: {k: v for k, v in t.items() if k != "audio_enc_to_dec_proj.bias"},
        "cross": lambda t: {
            **t,
            "decoder.model.decoder.layers.0.encoder_attn.q_proj.weight": np.zeros((48, 48), np.float32),
        },
    }.items():
        src = tmp_path / name
        shutil.copytree(melody_dir, src)
        save_file(mutate(tensors), src / "model.safetensors")
        with pytest.raises(UserError, match="audio_enc_to_dec_proj|encoder_attn"):
            convert(str(src), tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists()


def _text(ours, hf, prompts=PROMPTS):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf.name_or_path)
    inputs = tok(prompts, padding=True, return_tensors="pt")
    assert (inputs["attention_mask"] == 0).any()  # a padded prompt: its zeroed states are still attended
    states, mask = ours.encode_text(prompts)
    np.testing.assert_array_equal(np.array(mask), inputs["attention_mask"].numpy())
    return inputs, states, mask


@pytest.mark.parametrize("with_melody", [True, False], ids=["melody", "text-only"])
def test_teacher_forced_logits(ours, hf, with_melody):
    inputs, states, mask = _text(ours, hf)
    chroma = chroma_features(tones(1.3)) if with_melody else None  # 11 frames, tiled to chroma_length 64
    codes = np.random.default_rng(1).integers(0, 65, size=(2, 4, 7))
    codes[:, :, 0] = 64
    kw = {} if chroma is None else {"input_features": torch.from_numpy(np.stack([chroma, chroma]))}
    with torch.no_grad():
        ref = hf(**inputs, decoder_input_ids=torch.from_numpy(codes.reshape(8, 7)), **kw).logits.numpy()
    lm = ours.model.lm
    cond = lm.conditioning(states, mask, False, None if chroma is None else mx.array(chroma)[None])
    assert cond.prefix.shape == (2, 64 + states.shape[1], 48)
    got = np.array(lm.decoder(mx.array(codes), prefix=cond.prefix))
    assert got.shape == (2, 4, 64 + states.shape[1] + 7, 64)
    assert rel_err(got.reshape(8, -1, 64), ref) <= 1e-4


def hf_greedy(hf, inputs, frames, chroma=None, **kw):
    """transformers' greedy CFG generate; returns (codes, audio) (codes hooked at the codec)."""
    calls = []
    original = hf.audio_encoder.decode

    def hook(codes, *a, **k):
        calls.append(codes.clone())
        return original(codes, *a, **k)

    hf.audio_encoder.decode = hook
    if chroma is not None:
        kw["input_features"] = torch.from_numpy(np.stack([chroma] * inputs["input_ids"].shape[0]))
    try:
        with torch.no_grad():
            audio = hf.generate(
                **inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=frames + 3, **kw
            )
    finally:
        del hf.audio_encoder.decode
    return calls[0][0].numpy(), audio.numpy()


@pytest.mark.parametrize("with_melody", [True, False], ids=["melody", "text-only"])
def test_greedy_generation_matches_transformers(ours, hf, with_melody, tmp_path):
    import soundfile as sf

    inputs, states, mask = _text(ours, hf)
    frames = 12
    melody = tones(2.0, seed=3)
    chroma = chroma_features(melody) if with_melody else None
    ref_codes, ref_audio = hf_greedy(hf, inputs, frames, chroma)
    greedy = SamplingOptions(top_k=1, guidance_scale=3.0)
    c = None if chroma is None else mx.array(chroma)[None]
    codes = np.array(generate_codes(ours.model.lm, states, mask, frames, greedy, chroma=c))
    np.testing.assert_array_equal(codes, ref_codes)
    compiled = generate_codes(ours.model.lm, states, mask, frames, greedy, chroma=c, compiled=True)
    np.testing.assert_array_equal(np.array(compiled), ref_codes)
    # the public API, the melody read from a file
    sf.write(tmp_path / "m.wav", melody, SR, subtype="FLOAT")
    audio = ours.generate(
        PROMPTS,
        seconds=frames / 50,
        top_k=1,
        melody=tmp_path / "m.wav" if with_melody else None,
    )
    assert audio.shape == ref_audio.shape == (2, 1, frames * 640)
    assert rel_err(audio, ref_audio) <= 1e-4


def test_melody_changes_the_result_and_is_refused_elsewhere(ours, musicgen_converted):
    # the parity tests above would not notice a dropped melody if it changed nothing
    a = ours.generate_tokens("lofi piano", seconds=0.3, top_k=1)
    b = ours.generate_tokens("lofi piano", seconds=0.3, top_k=1, melody=tones(1.0))
    assert (np.array(a) != np.array(b)).mean() > 0.1
    with pytest.raises(UserError, match="melody"):
        MusicGen.from_pretrained(musicgen_converted).generate("x", seconds=0.2, melody=tones(1.0))


def test_stereo_melody_matches_transformers(tmp_path):
    """musicgen-stereo-melody layout: 8 interleaved codebooks, each side decoded by the mono codec."""
    from transformers import MusicgenMelodyForConditionalGeneration

    from tests.reference.musicgen import save_tiny_musicgen_melody

    src = save_tiny_musicgen_melody(tmp_path / "src", seed=5, audio_channels=2)
    ours = MusicGen.from_pretrained(convert(str(src), tmp_path / "out"))
    hf = MusicgenMelodyForConditionalGeneration.from_pretrained(src).eval()
    inputs, _, _ = _text(ours, hf)
    melody = tones(2.0, seed=1)
    chroma = torch.from_numpy(np.stack([chroma_features(melody)] * 2))
    calls = []
    original = hf.audio_encoder.decode
    hf.audio_encoder.decode = lambda codes, *a, **k: calls.append(codes.clone()) or original(codes, *a, **k)
    with torch.no_grad():
        ref_audio = hf.generate(
            **inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=10 + 3, input_features=chroma
        ).numpy()
    left, right = calls[0][0].numpy(), calls[1][0].numpy()
    ref = np.empty((2, 8, 10), left.dtype)
    ref[:, 0::2], ref[:, 1::2] = left, right
    codes = ours.generate_tokens(PROMPTS, seconds=0.2, top_k=1, melody=melody)
    np.testing.assert_array_equal(np.array(codes), ref)
    audio = ours.generate(PROMPTS, seconds=0.2, top_k=1, melody=melody)
    assert audio.shape == ref_audio.shape == (2, 2, 6400)
    assert rel_err(audio, ref_audio) <= 1e-4
