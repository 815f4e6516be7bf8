"""`mlx-audio-convert -q`: MusicGen LM / Stable Audio DiT linears quantized with nn.quantize, rest untouched.

The shared tiny MusicGen is 48 wide (FFN 96: only its fc2 takes group 32), so the quantized MusicGen tests
build their own tiny checkpoint (transformers, 64 wide, FFN 128); the 48-wide one checks the error for a
group size that divides no layer. Measured on these tiny models (fp32 source; SNR of the quantized model's
output against the unquantized one; every LM / DiT-block linear quantized): MusicGen teacher-forced LM logits
8-bit ~45-46 dB, 4-bit ~21 dB (group 32 or 64); Stable Audio small DiT output of one call 8-bit ~47-48 dB,
4-bit ~22 dB (docs/benchmarks.md, Quantization).
"""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_audio_generate.cli.convert import main as convert_main
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.generate import MusicGen
from mlx_audio_generate.stable_audio.generate import StableAudio
from mlx_audio_generate.weights import load_safetensors

# Honest bounds a few dB under the measured values above.
MIN_SNR_DB = {8: 35.0, 4: 15.0}


def snr_db(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(10 * np.log10((ref**2).sum() / ((x - ref) ** 2).sum()))


@pytest.fixture(scope="module")
def musicgen64_dir(tmp_path_factory):
    """A tiny MusicGen written by transformers whose LM widths (64 / 128) the MLX group sizes divide."""
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from tests.reference.musicgen import save_tiny_t5_tokenizer, tiny_configs

    t5, encodec, decoder = tiny_configs()
    decoder.hidden_size, decoder.ffn_dim = 64, 128
    torch.manual_seed(0)
    config = MusicgenConfig(text_encoder=t5, audio_encoder=encodec, decoder=decoder)
    model = MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    out = tmp_path_factory.mktemp("musicgen64-src")
    model.save_pretrained(out)
    save_tiny_t5_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def musicgen64_converted(musicgen64_dir, tmp_path_factory):
    return convert(str(musicgen64_dir), tmp_path_factory.mktemp("conv") / "mg64")


def linears(core: nn.Module, prefix: str, group_size: int) -> dict[str, nn.Module]:
    """The nn.Linear layers of an unquantized core whose input width `group_size` divides, by full name."""
    return {
        f"{prefix}.{path}": m
        for path, m in core.named_modules()
        if isinstance(m, nn.Linear) and m.weight.shape[-1] % group_size == 0
    }


def quantized_modules(core: nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}.{path}" for path, m in core.named_modules() if isinstance(m, nn.QuantizedLinear)}


def lm_logits(m: MusicGen) -> np.ndarray:
    tokens = mx.array(np.random.default_rng(0).integers(0, 64, (1, 4, 12)), dtype=mx.int32)
    states, mask = m.encode_text(["lofi piano"])
    states, mask = m.model.lm.project_text(states, mask, guidance=False)
    kv = m.model.lm.decoder.precompute_cross_kv(states)
    return np.array(m.model.lm.decoder(tokens, kv, None).astype(mx.float32))


def dit_output(sa: StableAudio) -> np.ndarray:
    cond = sa.condition(["lofi piano"], 1.0)
    x = mx.array(np.random.default_rng(0).standard_normal((1, 8, 24)).astype(np.float32))
    return np.array(sa.model.dit(x, mx.array([0.5]), cond.cross_attn_cond, cond.global_cond))


@pytest.mark.parametrize("bits", [8, 4])
def test_musicgen_lm_quantized(musicgen64_dir, musicgen64_converted, tmp_path, bits):
    out = tmp_path / f"q{bits}"
    with pytest.raises(SystemExit) as e:
        convert_main(["--model", str(musicgen64_dir), "--output", str(out), "-q", "--q-bits", str(bits),
                      "--q-group-size", "32"])  # fmt: skip
    assert e.value.code == 0
    meta = json.loads((out / "config.json").read_text())["mlx_audio_generate"]
    # 2 layers x (qkv_proj, out_proj, q_proj, kv_proj, out_proj, fc1, fc2) + lm_heads: every LM linear.
    assert meta["quantization"] == {"bits": bits, "group_size": 32, "modules": "lm", "layers": 15}
    assert meta["dtype"] == "float32"
    w, plain = (
        load_safetensors(out / "model.safetensors"),
        load_safetensors(musicgen64_converted / "model.safetensors"),
    )
    quantized = sorted(k.removesuffix(".scales") for k in w if k.endswith(".scales"))
    assert quantized and all(k.startswith("lm.") for k in quantized)
    assert "lm.decoder.lm_heads" in quantized and "lm.decoder.layers.0.fc1" in quantized
    # The residual-fused layers (addmm when dense) are quantized too: every LM linear but the text projection.
    for i in range(2):
        for name in ("self_attn.out_proj", "encoder_attn.out_proj", "fc2"):
            assert f"lm.decoder.layers.{i}.{name}" in quantized
    plain_model = MusicGen.from_pretrained(musicgen64_converted)
    expected = set(linears(plain_model.model.lm, "lm", 32)) - {"lm.enc_to_dec_proj"}
    assert set(quantized) == expected
    for k in quantized:
        assert w[f"{k}.weight"].dtype == mx.uint32 and f"{k}.biases" in w
        assert w[f"{k}.weight"].shape[-1] == plain[f"{k}.weight"].shape[-1] * bits // 32
    # T5, EnCodec, embeddings and every non-quantized tensor are stored exactly as without -q.
    rest = {k for k in plain if k.removesuffix(".weight") not in quantized}
    assert set(w) == rest | {f"{k}.{s}" for k in quantized for s in ("weight", "scales", "biases")}
    for k in rest:
        np.testing.assert_array_equal(np.array(w[k]), np.array(plain[k]), err_msg=k)
    assert (out / "model.safetensors").stat().st_size < (
        musicgen64_converted / "model.safetensors"
    ).stat().st_size

    model = MusicGen.from_pretrained(out)  # strict load: the saved quantization is re-applied first
    assert quantized_modules(model.model.lm, "lm") == expected
    layer = model.model.lm.decoder.layers[0]
    assert isinstance(layer.self_attn.out_proj, nn.QuantizedLinear) and layer.self_attn.out_proj.bits == bits
    assert isinstance(layer.fc2, nn.QuantizedLinear) and layer.fc2.group_size == 32
    assert not isinstance(model.model.lm.enc_to_dec_proj, nn.QuantizedLinear)
    snr = snr_db(lm_logits(model), lm_logits(plain_model))
    print(f"MusicGen LM {bits}-bit (group 32) teacher-forced logits SNR {snr:.1f} dB")
    assert snr > MIN_SNR_DB[bits]
    audio = model.generate("lofi piano", seconds=0.2, seed=0)
    assert audio.shape == (1, 1, 6400) and np.isfinite(audio).all()
    np.testing.assert_array_equal(model.generate("lofi piano", seconds=0.2, seed=0), audio)  # seeded
    greedy = model.generate("lofi piano", seconds=0.2, top_k=1)
    assert greedy.shape == (1, 1, 6400) and np.isfinite(greedy).all()
    np.testing.assert_array_equal(model.generate("lofi piano", seconds=0.2, top_k=1, seed=1), greedy)


def test_group_size_dividing_no_layer_is_an_error(musicgen_dir, tmp_path):
    # 48-wide LM, FFN 96: group 64 divides none of its quantizable inputs -> one clear error, nothing written.
    with pytest.raises(UserError, match="no LM layer .* divisible by --q-group-size 64"):
        convert(str(musicgen_dir), tmp_path / "out", quantize_bits=8, quantize_group_size=64)
    assert not (tmp_path / "out").exists()


def test_non_dividing_layers_stay_unquantized(stable_audio_small, tmp_path):
    # Group 128 on the 64-wide tiny DiT: only the feed-forward output (input 256) divides; the rest stays.
    src = stable_audio_small[0]
    out = convert(str(src), tmp_path / "q", t5=str(src / "t5"), quantize_bits=4, quantize_group_size=128)
    w = load_safetensors(out / "model.safetensors")
    assert sorted(k for k in w if k.endswith(".scales")) == [
        f"dit.blocks.{i}.ff.proj_out.scales" for i in range(2)
    ]
    assert w["dit.blocks.0.self_attn.qkv.weight"].dtype == mx.float32
    sa = StableAudio.from_pretrained(out)  # the partly quantized folder loads strictly
    assert np.isfinite(dit_output(sa)).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-q", "--q-bits", "3"], "--q-bits must be one of 4, 8"),
        (["-q", "--q-group-size", "16"], "--q-group-size must be one of 32, 64, 128"),
        (["--q-bits", "8"], "need -q"),
    ],
)
def test_cli_rejects_bad_values(musicgen_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        convert_main(["--model", str(musicgen_dir), "--output", str(tmp_path / "o"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    with pytest.raises(UserError):
        convert(str(musicgen_dir), tmp_path / "o", quantize_bits=True)


@pytest.mark.parametrize("bits", [8, 4])
def test_stable_audio_dit_quantized(stable_audio_small, stable_audio_small_converted, tmp_path, bits):
    src = stable_audio_small[0]
    out = convert(
        str(src), tmp_path / f"q{bits}", t5=str(src / "t5"), quantize_bits=bits, quantize_group_size=64
    )
    meta = json.loads((out / "config.json").read_text())["mlx_audio_generate"]
    assert meta["quantization"]["bits"] == bits and meta["quantization"]["modules"] == "dit"
    w = load_safetensors(out / "model.safetensors")
    quantized = sorted(k.removesuffix(".scales") for k in w if k.endswith(".scales"))
    assert quantized and all(k.startswith("dit.blocks.") for k in quantized)
    assert not any(k.startswith(("t5.", "vae.", "conditioner.")) and w[k].dtype == mx.uint32 for k in w)
    # Every transformer-block linear, the residual-fused attention outputs (`out`) included.
    plain = StableAudio.from_pretrained(stable_audio_small_converted)
    expected = {k for k in linears(plain.model.dit, "dit", 64) if k.startswith("dit.blocks.")}
    assert set(quantized) == expected
    assert {f"dit.blocks.0.{k}" for k in ("self_attn.out", "cross_attn.out", "ff.proj_out")} <= expected

    sa = StableAudio.from_pretrained(out)  # strict load: the saved quantization is re-applied first
    assert quantized_modules(sa.model.dit, "dit") == expected
    block = sa.model.dit.blocks[0]
    assert isinstance(block.self_attn.out, nn.QuantizedLinear) and block.self_attn.out.bits == bits
    assert isinstance(block.cross_attn.out, nn.QuantizedLinear)
    assert not isinstance(sa.model.dit.project_in, nn.QuantizedLinear)
    snr = snr_db(dit_output(sa), dit_output(plain))
    print(f"Stable Audio DiT {bits}-bit (group 64) one-call output SNR {snr:.1f} dB")
    assert snr > MIN_SNR_DB[bits]
    audio = sa.generate("lofi piano", seconds=0.5, steps=2, seed=0)
    assert np.isfinite(audio).all()
    np.testing.assert_array_equal(sa.generate("lofi piano", seconds=0.5, steps=2, seed=0), audio)  # seeded
