"""EnCodec parity with transformers' EncodecModel on tiny random checkpoints written by transformers."""

from __future__ import annotations

import copy
import json
import re

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.codecs.encodec import LSTM, Encodec, EncodecConfig, encodec_ignore_patterns
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import require

torch = require("torch")
require("transformers")

PREFIX = "audio_encoder."


def rel_err(ours: mx.array, ref) -> float:
    ours = np.array(ours, dtype=np.float64)
    ref = ref.detach().double().numpy() if hasattr(ref, "detach") else np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def audio_keys(tensors: dict[str, mx.array]) -> dict[str, mx.array]:
    return {k: v for k, v in tensors.items() if k.startswith(PREFIX)}


def load_ours(cfg_dict: dict, tensors: dict[str, mx.array], prefix: str = PREFIX) -> Encodec:
    model = Encodec(EncodecConfig.from_dict(cfg_dict))
    ckpt = Checkpoint(tensors)
    weights = model.sanitize(ckpt, prefix)
    ckpt.finish(encodec_ignore_patterns(prefix))
    model.load_weights(list(weights.items()), strict=True)
    return model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(reference EncodecModel, our Encodec, audio_encoder.* tensors, config) of a saved tiny MusicGen."""
    from tests.reference.musicgen import build_tiny_musicgen

    folder = tmp_path_factory.mktemp("tiny_musicgen_encodec")
    ref = build_tiny_musicgen()
    ref.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())["audio_encoder"]
    tensors = audio_keys(read_tensors(folder))
    return ref.audio_encoder, load_ours(cfg, dict(tensors)), tensors, cfg


def recentre_codebooks(enc, seed: int) -> None:
    """Give each codebook the per-dimension mean/std of the residual it quantizes.

    The random encoder's embeddings vary by ~0.002 around per-channel offsets of ~0.07, so N(0, 1) codebooks
    would map every frame to the same code and an encode test could not tell anything apart."""
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(2, 1, 9600, generator=g) * 0.3
    with torch.no_grad():
        residual = enc.encoder(probe)
        for layer in enc.quantizer.layers:
            flat = residual.permute(0, 2, 1).reshape(-1, residual.shape[1])
            embed = flat.mean(0) + flat.std(0) * torch.randn(layer.codebook.embed.shape, generator=g)
            layer.codebook.embed.copy_(embed)
            residual = residual - layer.decode(layer.encode(residual))


def torch_tensors(module, prefix: str) -> dict[str, mx.array]:
    return {prefix + k: mx.array(v.numpy()) for k, v in module.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_enc(tiny):
    """The tiny codec with recentred codebooks (reference copy, ours) for encode parity."""
    ref = copy.deepcopy(tiny[0])
    recentre_codebooks(ref, seed=5)
    return ref, load_ours(tiny[3], torch_tensors(ref, PREFIX))


def ref_decode(enc, codes: np.ndarray):
    with torch.no_grad():
        return enc.decode(torch.from_numpy(codes).long()[None], [None]).audio_values


def ref_encode(enc, audio: np.ndarray):
    with torch.no_grad():
        out = enc.encode(torch.from_numpy(audio))
    assert out.audio_codes.shape[0] == 1  # one chunk: MusicGen's codec is unchunked
    return out.audio_codes[0].numpy()


@pytest.mark.parametrize("n_q,frames", [(4, 1), (4, 2), (4, 37), (2, 6)])
def test_decode_matches_transformers(tiny, n_q, frames):
    ref, ours, _, cfg = tiny
    codes = np.random.default_rng(frames).integers(0, cfg["codebook_size"], (2, n_q, frames))
    expected = ref_decode(ref, codes)
    got = ours.decode(mx.array(codes))
    assert got.shape == (2, 1, frames * 640)
    assert rel_err(got, expected) <= 1e-4


@pytest.mark.parametrize("samples", [9600, 7777, 333])
def test_encode_matches_transformers(tiny_enc, samples):
    ref, ours = tiny_enc
    audio = (np.random.default_rng(samples).standard_normal((2, 1, samples)) * 0.3).astype(np.float32)
    expected = ref_encode(ref, audio)
    got = ours.encode(mx.array(audio))
    assert got.shape == expected.shape == (2, 4, -(-samples // 640))
    np.testing.assert_array_equal(np.array(got), expected)
    if samples > 640:
        assert len(np.unique(expected[:, 0])) > 3  # codes vary, so a wrong embedding would show


def test_weight_g_v_style_gives_same_weights(tiny):
    _, ours, tensors, _ = tiny
    renamed = {}
    for k, v in tensors.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        renamed[k.replace(".parametrizations.weight.original1", ".weight_v")] = v
    assert any(k.endswith(".weight_g") for k in renamed)
    new = ours.sanitize(Checkpoint(renamed), PREFIX)
    old = ours.sanitize(Checkpoint(dict(tensors)), PREFIX)
    assert new.keys() == old.keys()
    for k in old:
        np.testing.assert_array_equal(np.array(new[k]), np.array(old[k]), err_msg=k)


@pytest.mark.parametrize(
    "missing",
    [
        "audio_encoder.decoder.layers.1.lstm.bias_hh_l1",
        "audio_encoder.quantizer.layers.3.codebook.embed",
        "audio_encoder.encoder.layers.4.shortcut.conv.bias",
    ],
)
def test_missing_tensor_is_named(tiny, missing):
    _, ours, tensors, _ = tiny
    broken = dict(tensors)
    del broken[missing]
    with pytest.raises(UserError, match=re.escape(missing)):
        ours.sanitize(Checkpoint(broken), PREFIX)


def test_missing_conv_weight_is_named(tiny):
    _, ours, tensors, _ = tiny
    broken = {k: v for k, v in tensors.items() if not k.startswith(f"{PREFIX}decoder.layers.3.conv.param")}
    with pytest.raises(UserError, match=re.escape(f"{PREFIX}decoder.layers.3.conv")):
        ours.sanitize(Checkpoint(broken), PREFIX)


def test_unknown_tensor_is_caught(tiny):
    _, ours, tensors, _ = tiny
    extra = dict(tensors)
    extra[f"{PREFIX}encoder.layers.0.conv.scale"] = mx.zeros((4,))
    ckpt = Checkpoint(extra)
    ours.sanitize(ckpt, PREFIX)
    with pytest.raises(UserError, match=re.escape(f"{PREFIX}encoder.layers.0.conv.scale")):
        ckpt.finish(encodec_ignore_patterns(PREFIX))
    # Without the ignore list the codebook training buffers are the only leftovers.
    ckpt = Checkpoint(dict(tensors))
    ours.sanitize(ckpt, PREFIX)
    left = sorted(k for k in tensors if k not in ckpt.used)
    assert left and all(re.search(r"codebook\.(embed_avg|cluster_size|inited)$", k) for k in left)


def test_lstm_matches_torch():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(6, 8, num_layers=2).eval()
    lstm = LSTM(6, 8, 2)
    lstm.load_weights([(k, mx.array(v.detach().numpy())) for k, v in ref.state_dict().items()], strict=True)
    x = torch.randn(13, 3, 6)  # torch: (T, B, C); ours: (B, T, C)
    with torch.no_grad():
        expected = ref(x)[0].permute(1, 0, 2)
    got = lstm(mx.array(x.permute(1, 0, 2).numpy()))
    assert rel_err(got, expected) <= 1e-5


def test_identity_shortcut_codec():
    """Real MusicGen codecs have use_conv_shortcut=False (identity residual): check that variant too."""
    from transformers import EncodecModel

    from tests.reference.musicgen import tiny_configs

    _, cfg, _ = tiny_configs()
    cfg.use_conv_shortcut = False
    cfg.num_filters, cfg.hidden_size, cfg.codebook_dim = 2, 8, 8
    torch.manual_seed(3)
    ref = EncodecModel(cfg).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        for name, buf in ref.named_buffers():
            if name.endswith("codebook.embed"):
                buf.copy_(torch.randn(buf.shape, generator=g))
    tensors = torch_tensors(ref, "codec.")
    assert not any("shortcut" in k for k in tensors)
    ours = load_ours(cfg.to_dict(), tensors, prefix="codec.")
    codes = np.random.default_rng(0).integers(0, cfg.codebook_size, (1, 4, 9))
    assert rel_err(ours.decode(mx.array(codes)), ref_decode(ref, codes)) <= 1e-4
    recentre_codebooks(ref, seed=6)
    ours = load_ours(cfg.to_dict(), torch_tensors(ref, "codec."), prefix="codec.")
    audio = (np.random.default_rng(1).standard_normal((1, 1, 3001)) * 0.3).astype(np.float32)
    expected = ref_encode(ref, audio)
    assert len(np.unique(expected[:, 0])) > 2
    np.testing.assert_array_equal(np.array(ours.encode(mx.array(audio))), expected)


def test_config_of_musicgen_small():
    # The audio_encoder block of facebook/musicgen-small's config.json.
    d = {
        "audio_channels": 1,
        "chunk_length_s": None,
        "codebook_dim": 128,
        "codebook_size": 2048,
        "compress": 2,
        "dilation_growth_rate": 2,
        "hidden_size": 128,
        "kernel_size": 7,
        "last_kernel_size": 7,
        "model_type": "encodec",
        "norm_type": "weight_norm",
        "normalize": False,
        "num_filters": 64,
        "num_lstm_layers": 2,
        "num_residual_layers": 1,
        "overlap": None,
        "pad_mode": "reflect",
        "residual_kernel_size": 3,
        "sampling_rate": 32000,
        "target_bandwidths": [2.2],
        "trim_right_ratio": 1.0,
        "upsampling_ratios": [8, 5, 4, 4],
        "use_causal_conv": False,
        "use_conv_shortcut": False,
    }
    cfg = EncodecConfig.from_dict(d)
    assert (cfg.hop_length, cfg.frame_rate, cfg.num_quantizers) == (640, 50, 4)
    assert cfg.num_quantizers_for_bandwidth(cfg.target_bandwidths[0]) == 4
    with pytest.raises(UserError, match="normalize"):
        EncodecConfig.from_dict({**d, "normalize": True})


def test_bad_inputs_are_user_errors(tiny):
    _, ours, _, _ = tiny
    with pytest.raises(UserError, match="codes must lie"):
        ours.decode(mx.array([[[0], [1], [2], [64]]]))
    with pytest.raises(UserError, match="shaped"):
        ours.decode(mx.zeros((1, 5, 3), dtype=mx.int32))
    with pytest.raises(UserError, match="bandwidth"):
        ours.encode(mx.zeros((1, 1, 640)), bandwidth=6.0)
    with pytest.raises(UserError, match="shaped"):
        ours.encode(mx.zeros((1, 2, 640)))


@pytest.mark.parametrize(
    "kernel,stride,causal", [(16, 8, False), (10, 5, False), (7, 3, True), (5, 2, False), (3, 4, False)]
)
def test_conv_transpose_matches_mlx(kernel, stride, causal):
    """Our matmul + overlap-add transposed conv equals mx.conv_transpose1d for general kernel/stride."""
    from mlx_audio_generate.codecs.encodec import EncodecConvTranspose1d

    layer = EncodecConvTranspose1d(EncodecConfig(use_causal_conv=causal), 3, 2, kernel, stride)
    layer.conv.bias = mx.random.normal((2,), key=mx.random.key(1))
    x = mx.random.normal((2, 5, 3), key=mx.random.key(2))
    ref = mx.conv_transpose1d(x, layer.conv.weight, stride=stride) + layer.conv.bias
    ref = ref[:, layer.trim_left : ref.shape[1] - layer.trim_right]
    got = layer(x)
    assert got.shape == ref.shape
    assert rel_err(got, np.array(ref)) <= 1e-6
