"""Oobleck VAE parity: our MLX encoder/bottleneck/decoder vs stable-audio-tools (and diffusers), fp32."""

from __future__ import annotations

import copy
import json
import re

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.codecs.oobleck import OobleckConfig, OobleckVAE, load_oobleck
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import require
from tests.reference.sat import import_sat
from tests.reference.stable_audio import save_tiny_stable_audio, tiny_config

# reference-only tests: without them the module is skipped, saying how to install them
torch = require("torch")

TOL = 1e-4
PREFIX = "pretransform.model."


def rel_err(ours: mx.array, ref: torch.Tensor) -> float:
    o, r = np.array(ours), ref.detach().numpy()
    assert o.shape == r.shape, (o.shape, r.shape)
    return float(np.abs(o - r).max() / np.abs(r).max())


@pytest.fixture(scope="session")
def tiny_sa(tmp_path_factory):
    """style -> (checkpoint folder, stable-audio-tools wrapper, our config, our VAE); built once a style."""
    cache: dict = {}

    def get(style: str):
        if style not in cache:
            folder, ref = save_tiny_stable_audio(tmp_path_factory.mktemp(f"sa_{style}"), style)
            cfg = OobleckConfig.from_dict(
                json.loads((folder / "model_config.json").read_text())["model"]["pretransform"]
            )
            ckpt = Checkpoint(read_tensors(folder))
            vae = load_oobleck(cfg, OobleckVAE(cfg).sanitize(ckpt, PREFIX))
            cache[style] = (folder, ref, cfg, vae)
        return cache[style]

    return get


def build_sat_pretransform(ae_config: dict, scale: float = 1.0, seed: int = 0):
    """A stable-audio-tools AutoencoderPretransform for `ae_config`, every parameter perturbed."""
    import_sat()
    from stable_audio_tools.models.factory import create_pretransform_from_config

    pt_dict = {"type": "autoencoder", "scale": scale, "config": copy.deepcopy(ae_config)}
    torch.manual_seed(seed)
    pt = create_pretransform_from_config(copy.deepcopy(pt_dict), 44100).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in pt.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    state = {k: mx.array(v.detach().numpy()) for k, v in pt.model.state_dict().items()}
    return pt, pt_dict, state


def test_config_from_dict():
    pt = tiny_config("small")["model"]["pretransform"]
    cfg = OobleckConfig.from_dict(pt)
    assert cfg == OobleckConfig.from_dict(pt["config"])
    assert (cfg.latent_dim, cfg.downsampling_ratio, cfg.io_channels, cfg.scale) == (8, 2048, 2, 1.0)
    assert cfg.encoder.latent_dim == 16 and cfg.decoder.widths == [4, 4, 8, 16, 32, 64]
    assert cfg.encoder.use_snake and not cfg.final_tanh
    bad = copy.deepcopy(pt)
    bad["config"]["latent_dim"] = 4
    with pytest.raises(UserError, match="latent_dim"):
        OobleckConfig.from_dict(bad)
    bad = copy.deepcopy(pt)
    bad["config"]["bottleneck"] = {"type": "tanh"}
    with pytest.raises(UserError, match="bottleneck"):
        OobleckConfig.from_dict(bad)


@pytest.mark.parametrize("style", ["small", "1.0"])
def test_decode_matches_reference(tiny_sa, style):
    _, ref, cfg, vae = tiny_sa(style)
    z = torch.randn(2, cfg.latent_dim, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.pretransform.decode(z)
    got = vae.decode(mx.array(z.numpy()))
    assert got.shape == (2, 2, 5 * 2048)
    err = rel_err(got, want)
    print(f"decode[{style}] rel err {err:.2e}")
    assert err <= TOL


def test_encode_matches_reference(tiny_sa, monkeypatch):
    _, ref, cfg, vae = tiny_sa("small")
    audio = torch.randn(2, 2, 3 * 2048, generator=torch.Generator().manual_seed(4)) * 0.3
    x = mx.array(audio.numpy())
    with torch.no_grad():
        _, info = ref.pretransform.model.encode(audio, return_info=True, iterate_batch=True)
    pre = info["pre_bottleneck_latents"]
    assert rel_err(vae.encode_pre_bottleneck(x), pre) <= TOL
    mean_err = rel_err(vae.encode(x), pre[:, : cfg.latent_dim])
    scale_err = rel_err(vae.encode_pre_bottleneck(x)[:, cfg.latent_dim :], pre[:, cfg.latent_dim :])

    # The reference samples with torch.randn_like: hand it a fixed tensor and give ours the same noise.
    noise = torch.randn(2, cfg.latent_dim, 3, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **k: noise.clone())
    with torch.no_grad():
        want = ref.pretransform.encode(audio)
    sample_err = rel_err(vae.encode(x, noise=mx.array(noise.numpy())), want)
    print(f"encode mean {mean_err:.2e} scale {scale_err:.2e} sample {sample_err:.2e}")
    assert max(mean_err, scale_err, sample_err) <= TOL


# stable-audio-tools -> diffusers AutoencoderOobleck module paths (weight_g/weight_v/bias/alpha/beta kept).
_RES = {"0": "snake1", "1": "conv1", "2": "snake2", "3": "conv2"}


def sat_to_diffusers_key(key: str, n: int) -> str:
    side, rest = key.split(".", 1)
    m = re.fullmatch(r"layers\.(\d+)\.(.*)", rest)
    i, tail = int(m[1]), m[2]
    if i == 0:
        return f"{side}.conv1.{tail}"
    if i == n + 1:
        return f"{side}.snake1.{tail}"
    if i == n + 2:
        return f"{side}.conv2.{tail}"
    j, tail = re.fullmatch(r"layers\.(\d+)\.(.*)", tail).groups()
    j = int(j)
    block = f"{side}.block.{i - 1}"
    res = re.fullmatch(r"layers\.(\d)\.(.*)", tail)
    if side == "encoder":  # [res1, res2, res3, snake1, conv1]
        if j < 3:
            return f"{block}.res_unit{j + 1}.{_RES[res[1]]}.{res[2]}"
        return f"{block}.{'snake1' if j == 3 else 'conv1'}.{tail}"
    if j >= 2:  # decoder block: [snake1, conv_t1, res1, res2, res3]
        return f"{block}.res_unit{j - 1}.{_RES[res[1]]}.{res[2]}"
    return f"{block}.{'snake1' if j == 0 else 'conv_t1'}.{tail}"


def load_diffusers(state: dict[str, torch.Tensor], cfg: OobleckConfig, parts: tuple[str, ...]):
    from diffusers import AutoencoderOobleck

    e, d = cfg.encoder, cfg.decoder
    assert e.c_mults == d.c_mults and e.strides == d.strides  # diffusers shares them
    dm = AutoencoderOobleck(
        encoder_hidden_size=e.channels,
        downsampling_ratios=list(e.strides),
        channel_multiples=list(e.c_mults),
        decoder_channels=d.channels,
        decoder_input_channels=cfg.latent_dim,
        audio_channels=cfg.io_channels,
    ).eval()
    for part in parts:
        module = getattr(dm, part)
        sd = {}
        for k, v in state.items():
            if k.startswith(part + "."):
                dk = sat_to_diffusers_key(k, len(e.strides))
                sd[dk.split(".", 1)[1]] = v.reshape(module.state_dict()[dk.split(".", 1)[1]].shape)
        module.load_state_dict(sd, strict=True)
    return dm


def test_diffusers_decode_matches(tiny_sa):
    _, ref, cfg, vae = tiny_sa("small")
    state = {k[len(PREFIX) :]: v for k, v in ref.state_dict().items() if k.startswith(PREFIX)}
    # Only the decoder: diffusers' encoder emits `encoder_hidden_size` channels, tying channels to
    # 2 x latent_dim (128 = 2 x 64 in the real model), which the tiny config (4 vs 16) does not satisfy.
    dm = load_diffusers(state, cfg, ("decoder",))
    z = torch.randn(1, cfg.latent_dim, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = dm.decode(z).sample
    err = rel_err(vae.decode(mx.array(z.numpy())), want)
    print(f"diffusers decode rel err {err:.2e}")
    assert err <= TOL


def test_diffusers_encoder_when_widths_allow():
    # channels == 2 x latent_dim, as in the real checkpoints, so diffusers can hold the encoder too.
    ae = copy.deepcopy(tiny_config("small")["model"]["pretransform"]["config"])
    for side in ("encoder", "decoder"):
        ae[side]["config"].update(channels=16, c_mults=[1, 2], strides=[2, 4])
    ae["downsampling_ratio"] = 8
    pt, pt_dict, state = build_sat_pretransform(ae)
    cfg = OobleckConfig.from_dict(pt_dict)
    ckpt = Checkpoint(state)
    vae = load_oobleck(cfg, OobleckVAE(cfg).sanitize(ckpt, ""))
    ckpt.finish()
    dm = load_diffusers(pt.model.state_dict(), cfg, ("encoder", "decoder"))
    audio = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mean = dm.encode(audio).latent_dist.mean
        dec = dm.decode(mean).sample
    x = mx.array(audio.numpy())
    assert rel_err(vae.encode(x), mean) <= TOL
    assert rel_err(vae.decode(mx.array(mean.numpy())), dec) <= TOL


def test_elu_final_tanh_and_scale_match_reference(monkeypatch):
    ae = copy.deepcopy(tiny_config("small")["model"]["pretransform"]["config"])
    for side in ("encoder", "decoder"):
        ae[side]["config"].update(channels=4, c_mults=[1, 2], strides=[2, 4], use_snake=False)
    ae["decoder"]["config"]["final_tanh"] = True
    ae["downsampling_ratio"] = 8
    pt, pt_dict, state = build_sat_pretransform(ae, scale=2.5)
    cfg = OobleckConfig.from_dict(pt_dict)
    assert cfg.scale == 2.5 and cfg.final_tanh and not cfg.decoder.use_snake
    ckpt = Checkpoint(state)
    vae = load_oobleck(cfg, OobleckVAE(cfg).sanitize(ckpt, ""))
    ckpt.finish()
    z = torch.randn(2, cfg.latent_dim, 6, generator=torch.Generator().manual_seed(8))
    noise = torch.randn(2, cfg.latent_dim, 6, generator=torch.Generator().manual_seed(9))
    audio = torch.randn(2, 2, 48, generator=torch.Generator().manual_seed(10))
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **k: noise.clone())
    with torch.no_grad():
        want_dec, want_enc = pt.decode(z), pt.encode(audio)
    assert rel_err(vae.decode(mx.array(z.numpy())), want_dec) <= TOL
    assert rel_err(vae.encode(mx.array(audio.numpy()), noise=mx.array(noise.numpy())), want_enc) <= TOL


def test_sanitize_accounts_for_every_tensor(tiny_sa):
    folder, _, cfg, vae = tiny_sa("small")
    ckpt = Checkpoint(read_tensors(folder))
    weights = OobleckVAE(cfg).sanitize(ckpt, PREFIX)
    ckpt.finish(ignore=[r"(?!pretransform\.).*"])  # everything under the prefix was used
    assert set(weights) == {k for k, _ in _flat(vae.parameters())}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def test_sanitize_parametrizations_style(tiny_sa):
    folder, _, cfg, vae = tiny_sa("small")
    renamed = {
        k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): v
        for k, v in read_tensors(folder).items()
    }
    weights = OobleckVAE(cfg).sanitize(Checkpoint(renamed), PREFIX)
    ours = dict(_flat(vae.parameters()))
    assert all(mx.array_equal(weights[k], ours[k]) for k in weights)


def test_missing_and_extra_tensors(tiny_sa):
    folder, _, cfg, _ = tiny_sa("small")
    tensors = read_tensors(folder)
    for missing in (f"{PREFIX}decoder.layers.2.layers.0.beta", f"{PREFIX}encoder.layers.0.bias"):
        t = dict(tensors)
        del t[missing]
        with pytest.raises(UserError, match=re.escape(missing)):
            OobleckVAE(cfg).sanitize(Checkpoint(t), PREFIX)
    t = dict(tensors)
    del t[f"{PREFIX}decoder.layers.1.layers.1.weight_g"]
    with pytest.raises(UserError, match=re.escape(f"{PREFIX}decoder.layers.1.layers.1")):
        OobleckVAE(cfg).sanitize(Checkpoint(t), PREFIX)

    extra = f"{PREFIX}decoder.layers.7.bias"  # the bias-free output conv must not gain one silently
    ckpt = Checkpoint({**tensors, extra: mx.zeros((2,))})
    OobleckVAE(cfg).sanitize(ckpt, PREFIX)
    with pytest.raises(UserError, match=re.escape(extra)):
        ckpt.finish(ignore=[r"(?!pretransform\.).*"])
