"""MusicGen end to end against transformers: our converter + T5 + LM + EnCodec vs `generate`.

Greedy decoding with guidance 3 must be token-identical to transformers' `generate` and the audio equal
within 1e-4 relative error (fp32), for mono and stereo tiny checkpoints written by transformers itself.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.generate import MusicGen
from mlx_audio_generate.weights import load_safetensors
from tests.reference import require

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch", "transformers")
from transformers import AutoTokenizer, MusicgenForConditionalGeneration  # noqa: E402

PROMPTS = ["lofi piano with warm vinyl crackle", "dark techno beat"]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def reference_generate(src, prompts, frames):
    """transformers' greedy CFG generate; returns (codes (B, K, frames), audio (B, C, T))."""
    model = MusicgenForConditionalGeneration.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    inputs = tok(prompts, padding=True, return_tensors="pt")
    k = model.decoder.config.num_codebooks // model.decoder.config.audio_channels
    captured = []
    orig = model.audio_encoder.decode

    def hook(codes, *a, **kw):
        captured.append(codes.clone())
        return orig(codes, *a, **kw)

    model.audio_encoder.decode = hook
    with torch.no_grad():
        audio = model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=frames + k - 1)
    # stereo decodes twice (left = even codebooks, right = odd); re-interleave the captured codes
    if len(captured) == 2:
        left, right = captured[0][0], captured[1][0]
        codes = torch.stack([left, right], dim=2).flatten(1, 2)
    else:
        codes = captured[0][0]
    return codes.numpy(), audio.numpy()


@pytest.mark.parametrize("stereo", [False, True], ids=["mono", "stereo"])
def test_greedy_generation_matches_transformers(stereo, request):
    src = request.getfixturevalue("musicgen_stereo_dir" if stereo else "musicgen_dir")
    conv = request.getfixturevalue("musicgen_stereo_converted" if stereo else "musicgen_converted")
    frames = 30
    ref_codes, ref_audio = reference_generate(src, PROMPTS, frames)

    ours = MusicGen.from_pretrained(conv)
    seconds = frames / ours.frame_rate
    states, mask = ours.encode_text(PROMPTS)
    from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_codes

    codes = generate_codes(ours.model.lm, states, mask, frames, SamplingOptions(top_k=1, guidance_scale=3.0))
    np.testing.assert_array_equal(np.array(codes), ref_codes)

    audio = ours.generate(PROMPTS, seconds=seconds, top_k=1, guidance_coef=3.0, seed=0)
    assert audio.shape == ref_audio.shape == (2, 2 if stereo else 1, frames * 640)
    assert rel_err(audio, ref_audio) <= 1e-4


def test_length_is_exact_and_seed_reproducible(musicgen_converted):
    model = MusicGen.from_pretrained(musicgen_converted)
    for seconds in (0.5, 0.517, 1.0):
        audio = model.generate("lofi piano", seconds=seconds, seed=3)
        assert audio.shape == (1, 1, round(seconds * 32000))
    a = model.generate("lofi piano", seconds=0.5, seed=7)
    b = model.generate("lofi piano", seconds=0.5, seed=7)
    c = model.generate("lofi piano", seconds=0.5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_converter_writes_the_dtype_asked_for(musicgen_dir, tmp_path, dtype):
    out = convert(str(musicgen_dir), tmp_path / "out", dtype=dtype)
    weights = load_safetensors(out / "model.safetensors")
    assert {str(v.dtype) for v in weights.values()} == {f"mlx.core.{dtype}"}
    assert json.loads((out / "config.json").read_text())["mlx_audio_generate"]["dtype"] == dtype
    audio = MusicGen.from_pretrained(out).generate("lofi piano", seconds=0.2, seed=0)
    assert np.isfinite(audio).all()


def test_half_precision_stays_close_to_fp32(musicgen_dir, musicgen_converted, tmp_path):
    """Teacher-forced LM logits in bf16 within a loose tolerance of fp32 (greedy tokens may differ)."""
    ref = MusicGen.from_pretrained(musicgen_converted)
    half = MusicGen.from_pretrained(convert(str(musicgen_dir), tmp_path / "bf16", dtype="bfloat16"))
    tokens = mx.array(np.random.default_rng(0).integers(0, 64, (1, 4, 12)), dtype=mx.int32)
    out = []
    for m in (ref, half):
        states, mask = m.encode_text(["lofi piano"])
        states, mask = m.model.lm.project_text(states, mask, guidance=False)
        kv = m.model.lm.decoder.precompute_cross_kv(states)
        out.append(np.array(m.model.lm.decoder(tokens, kv, None).astype(mx.float32)))
    assert rel_err(out[1], out[0]) < 5e-2


def test_pickle_checkpoint_converts_identically(musicgen_dir, musicgen_converted, tmp_path):
    """A pytorch_model.bin (read with torch.load(weights_only=True)) gives the same weights."""
    from safetensors.torch import load_file

    src = tmp_path / "bin"
    src.mkdir()
    # What older hub repos ship: the same state dict pickled by torch.save.
    torch.save(load_file(musicgen_dir / "model.safetensors"), src / "pytorch_model.bin")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(musicgen_dir / f, src / f)
    assert not list(src.glob("*.safetensors")) and list(src.glob("pytorch_model*.bin"))
    out = convert(str(src), tmp_path / "out")
    a = load_safetensors(out / "model.safetensors")
    b = load_safetensors(musicgen_converted / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.array(a[k]), np.array(b[k]))


def test_converter_rejects_unknown_and_missing_tensors(musicgen_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(musicgen_dir / "model.safetensors")
    for name, mutate in {
        "extra": lambda t: {**t, "decoder.model.decoder.layers.9.fc1.weight": np.zeros((2, 2), np.float32)},
        "missing": lambda t: {
            k: v for k, v in t.items() if k != "text_encoder.encoder.final_layer_norm.weight"
        },
    }.items():
        src = tmp_path / name
        shutil.copytree(musicgen_dir, src)
        save_file(mutate(tensors), src / "model.safetensors")
        with pytest.raises(UserError) as e:
            convert(str(src), tmp_path / f"out-{name}")
        key = "layers.9.fc1" if name == "extra" else "final_layer_norm"
        assert key in str(e.value)
        assert not (tmp_path / f"out-{name}").exists()  # nothing half-written


def test_rows_depend_only_on_their_prompt_and_seed(musicgen_converted):
    """Batched generation with per-row seeds: each row equals generating that prompt alone with its seed."""
    model = MusicGen.from_pretrained(musicgen_converted)
    batch = model.generate(["lofi piano", "dark techno", "lofi piano"], seconds=0.4, seed=[1, 2, 3])
    for row, (prompt, seed) in enumerate([("lofi piano", 1), ("dark techno", 2), ("lofi piano", 3)]):
        alone = model.generate(prompt, seconds=0.4, seed=seed)[0]
        np.testing.assert_allclose(batch[row], alone, rtol=0, atol=1e-6)
    assert not np.allclose(batch[0], batch[2])  # same prompt, different seeds: variations differ
    with pytest.raises(UserError, match="2 seeds for 3 prompts"):
        model.generate(["a", "b", "c"], seconds=0.2, seed=[1, 2])
