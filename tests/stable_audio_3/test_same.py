"""SAME-S / SAME-L parity: our MLX autoencoder vs stable_audio_3's pretransform on the tiny checkpoints, fp32.

Reference outputs come from `tests.reference.sa3_same.make` (committed under tests/fixtures/sa3/same/, and
rerun live into a tmp dir when the reference sources are present). The reference decoder adds random noise to
its new tokens (`mask_noise`, also in eval): the fixtures were made with it set to 0 on every decoder module,
except the noise case, where the reference's own torch draws are recovered (same seed, same order) and
injected into ours.
"""

from __future__ import annotations

import copy
import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mlx_audio_generate.codecs import same_blocks
from mlx_audio_generate.codecs.same import IGNORED, SAME, SAMEConfig, load_same
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference.parity import SOURCES, reference_outputs, rel_err
from tests.reference.sa3 import REPO

TOL = 1e-4
PREFIX = "pretransform.model."
NAMES = ("small", "medium")
DEEP = ("deep_chunked", "deep_window")  # two resampling blocks a side, random weights (sa3_same.deep_config)
COMMITTED = REPO / "tests/fixtures/sa3/same"
OTHER_PARTS = [r"model\.model\..*", r"conditioner\..*"]  # the DiT and conditioners: not the codec's


def folder(name: str):
    return REPO / "tests/fixtures/sa3" / name


def pretransform_config(name: str) -> dict:
    return json.loads((folder(name) / "model_config.json").read_text())["model"]["pretransform"]


def convert(name: str, cfg_dict: dict | None = None) -> SAME:
    cfg = SAMEConfig.from_dict(cfg_dict or pretransform_config(name))
    ckpt = Checkpoint(read_tensors(folder(name)))
    weights = SAME(cfg).sanitize(ckpt, PREFIX)
    ckpt.finish(ignore=[*OTHER_PARTS, *IGNORED])
    return load_same(cfg, weights)


@pytest.fixture(scope="session")
def ours():
    return {name: convert(name) for name in NAMES}


@pytest.fixture(params=SOURCES)
def source(request, sa3_same_live):
    """The folder of reference outputs: the committed fixtures, or a live run of the reference."""
    return reference_outputs(request.param, COMMITTED, sa3_same_live)


@pytest.fixture
def ref(source):
    """name -> reference outputs (small, medium, deep_chunked, deep_window)."""
    return {name: load_file(str(source / f"{name}.safetensors")) for name in (*NAMES, *DEEP)}


def test_live_inputs_match_committed(sa3_same_live):
    """The fixture inputs and random weights are deterministic: a live run rebuilds the committed ones."""
    if sa3_same_live is None:
        pytest.skip("reference sources (../shared/reference) absent: nothing to rebuild")
    for name in (*NAMES, *DEEP):
        live, committed = (load_file(str(d / f"{name}.safetensors")) for d in (sa3_same_live, COMMITTED))
        for key in ("audio", "audio_pad", "chunk_latents", "long_latents", "chunk_audio"):
            if key in committed:
                np.testing.assert_array_equal(live[key], committed[key])
    for name in DEEP:
        live, committed = (
            load_file(str(d / f"{name}_model.safetensors")) for d in (sa3_same_live, COMMITTED)
        )
        assert live.keys() == committed.keys()
        for key in live:
            np.testing.assert_array_equal(live[key], committed[key])


def test_config():
    s, m = (SAMEConfig.from_dict(pretransform_config(n)) for n in NAMES)
    for c in (s, m):
        assert (c.downsampling_ratio, c.latent_dim, c.io_channels, c.patch_size) == (128, 16, 2, 8)
        assert c.auto_scale and not c.noise_regularize and not c.chunked and not c.soft_clip
        assert len(c.encoder) == len(c.decoder) == 1
    se, sd = s.encoder[0], s.decoder[0]
    assert (se.in_channels, se.out_channels, se.stride, se.depth, se.heads_dim) == (16, 32, 16, 2, 16)
    assert se.window is None and se.midpoint_shift and se.row == 34 and not se.conv_mapping
    assert sd.conv_mapping and sd.mask_noise == 0.01 and (sd.in_channels, sd.out_channels) == (32, 16)
    assert m.encoder[0].window == (17, 17) and m.decoder[0].window == (17, 17)
    assert not any(m.decoder[0].sinusoidal(i) for i in range(2))  # [1] with depth 2: no sin block
    # the inner `config` and the standalone SAME layout (encoder/decoder at the top) give the same config
    assert SAMEConfig.from_dict(pretransform_config("small")["config"]) == s
    model = SAME(s)
    assert (model.downsampling_ratio, model.latent_dim, model.io_channels) == (128, 16, 2)
    # SAME-S pads audio to 32 patches (2 latents), SAME-L to 16 patches (1 latent)
    assert [model.latent_frames(t) for t in (1, 128, 256, 257, 677, 768)] == [2, 2, 2, 4, 6, 6]
    assert [SAME(m).latent_frames(t) for t in (1, 128, 129, 677)] == [1, 1, 2, 6]


def _bad(mutate) -> dict:
    d = copy.deepcopy(pretransform_config("small"))
    mutate(d["config"])
    return d


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.update(latent_dim=8), "latent_dim"),
        (lambda c: c.update(downsampling_ratio=256), "downsampling_ratio"),
        (lambda c: c["bottleneck"].update(type="vae"), "bottleneck"),
        (lambda c: c["bottleneck"]["config"].update(noise_augment_dim=4), "noise_augment_dim"),
        (lambda c: c["encoder"].update(type="oobleck"), "encoder"),
        (lambda c: c["encoder"]["config"].update(conformer=True), "conformer"),
        (lambda c: c["decoder"]["config"].update(dyt=False), "DyT"),
        (lambda c: c["encoder"]["config"].update(chunk_size=24), "chunk_size"),
        (lambda c: c["encoder"]["config"].update(in_channels=8), "in_channels"),
        (lambda c: c["pretransform"]["config"].update(oversampling=2), "oversampling"),
        (lambda c: c["decoder"]["config"].pop("strides"), "strides"),
        (lambda c: c["decoder"]["config"].update(transformer_depths=[0]), "transformer_depths"),
    ],
)
def test_bad_config(mutate, match):
    with pytest.raises(UserError, match=match):
        SAMEConfig.from_dict(_bad(mutate))
    with pytest.raises(UserError, match="autoencoder"):
        SAMEConfig.from_dict({"type": "dac", "config": {}})


@pytest.mark.parametrize("name", NAMES)
def test_key_accounting(name):
    """Every `pretransform.model.*` tensor is used, or ignored for a stated reason; standalone prefix ''."""
    cfg = SAMEConfig.from_dict(pretransform_config(name))
    tensors = read_tensors(folder(name))
    ckpt = Checkpoint(tensors)
    SAME(cfg).sanitize(ckpt, PREFIX)
    with pytest.raises(UserError, match="inv_freq|noise_scaling_factor"):
        ckpt.finish(ignore=OTHER_PARTS)  # the ignored ones are real, and only those are left
    ckpt.finish(ignore=[*OTHER_PARTS, *IGNORED])
    left = {k for k in tensors if k.startswith(PREFIX)} - ckpt.used
    assert left and all(k.endswith(("rope.inv_freq", "noise_scaling_factor")) for k in left)
    # a standalone SAME repo: the same tensors without the prefix
    alone = Checkpoint({k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)})
    weights = SAME(cfg).sanitize(alone, "")
    alone.finish(ignore=list(IGNORED))
    load_same(cfg, weights)  # strict: every parameter present, no extras
    # a wrong RoPE buffer or a missing tensor is a clear error
    key = next(k for k in tensors if k.endswith("rope.inv_freq"))
    with pytest.raises(UserError, match="inv_freq"):
        SAME(cfg).sanitize(Checkpoint({**tensors, key: tensors[key] * 2}), PREFIX)
    missing = {k: v for k, v in tensors.items() if not k.endswith("decoder.layers.3.new_tokens")}
    with pytest.raises(UserError, match="new_tokens"):
        SAME(cfg).sanitize(Checkpoint(missing), PREFIX)


@pytest.mark.parametrize("name", NAMES)
def test_encode(ours, ref, name):
    r = ref[name]
    for audio, latents in (("audio", "latents"), ("audio_pad", "latents_pad")):
        assert rel_err(ours[name].encode(mx.array(r[audio])), r[latents]) <= TOL, (name, audio)
    assert r["latents_pad"].shape[-1] == ours[name].latent_frames(r["audio_pad"].shape[-1])


@pytest.mark.parametrize("name", NAMES)
def test_decode(ours, ref, name):
    r = ref[name]
    cases = (("latents", "decoded"), ("latents_pad", "decoded_pad"))
    for latents, decoded in cases:
        assert rel_err(ours[name].decode(mx.array(r[latents])), r[decoded]) <= TOL, (name, latents)
    # 5 latents: SAME-S pads to 6 (its output covers them), SAME-L decodes 5
    odd = ours[name].decode(mx.array(r["latents"][..., :5]))
    assert rel_err(odd, r["decoded_odd"]) <= TOL
    assert odd.shape[-1] == (6 if name == "small" else 5) * 128


@pytest.mark.parametrize("name", NAMES)
def test_chunked(ours, ref, name):
    """decode_chunked / encode_chunked vs the reference's chunked decode_audio / encode_audio."""
    r, model = ref[name], ours[name]
    for chunk, overlap in ((8, 4), (7, 3)):  # (7, 3): odd overlap, where later windows overwrite one latent
        got = model.decode_chunked(mx.array(r["chunk_latents"]), chunk, overlap)
        assert rel_err(got, r[f"chunk_decoded_{chunk}_{overlap}"]) <= TOL, (chunk, overlap)
    assert rel_err(model.decode_chunked(mx.array(r["long_latents"])), r["long_decoded"]) <= TOL
    got = model.encode_chunked(mx.array(r["chunk_audio"]), 8, 4)
    assert rel_err(got, r["chunk_encoded"]) <= TOL
    # vs the unchunked decode: on this tiny SAME-L only a window's edge latent differs from the whole
    # decode (measured), so trimming half an overlap of 2 or 1 reproduces it; SAME-S's attention chunks
    # move with the window start, so its chunked decode differs
    whole = model.decode(mx.array(r["chunk_latents"]))[..., : 21 * 128]
    if name == "medium":
        assert rel_err(whole, r["chunk_decoded_8_4"]) <= TOL
        assert rel_err(whole, r["chunk_decoded_7_3"]) <= TOL
    else:
        assert rel_err(whole, r["chunk_decoded_8_4"]) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_injected_noise(ours, ref, name):
    """The reference's own mask_noise and noise_regularize draws, injected, reproduce its noisy decode."""
    r, model = ref[name], ours[name]
    check_noise(model, r)
    latent_noise, noise = model.draw_noise(mx.array(r["latents"]), mx.random.key(3))
    assert latent_noise is None and [n.shape for n in noise] == [r["noise_tokens_0"].shape]
    assert abs(float(mx.std(noise[0])) - 0.01) < 2e-3


def check_noise(model: SAME, r: dict) -> None:
    z = mx.array(r["latents"])
    tokens = [mx.array(r[f"noise_tokens_{i}"]) for i in range(len(model.decoder_blocks))]
    assert model.noise_shapes(*z.shape[::2]) == [t.shape for t in tokens]
    got = model.decode(z, noise=tokens, latent_noise=mx.array(r["noise_latent"]))
    assert rel_err(got, r["noise_decoded"]) <= TOL
    assert rel_err(model.decode(z), r["noise_decoded"]) > 1e-3  # the noise matters


def test_sin_gate(ref):
    """Decoder sinusoidal_blocks [2]: block 1 gates with sin(pi x) (same weights, reference rebuilt)."""
    d = copy.deepcopy(pretransform_config("medium"))
    d["config"]["decoder"]["config"]["sinusoidal_blocks"] = [2]
    model = convert("medium", d)
    assert [model.config.decoder[0].sinusoidal(i) for i in range(2)] == [False, True]
    r = ref["medium"]
    assert rel_err(model.decode(mx.array(r["latents"])), r["sin_decoded"]) <= TOL
    assert rel_err(model.decode(mx.array(r["latents"])), r["decoded"]) > 1e-3


@pytest.mark.parametrize("block", [7, 20, 34])
def test_band_blocks(ours, ref, block, monkeypatch):
    """The sliding-window attention in several query blocks (halo gathered) equals the reference's band."""
    monkeypatch.setattr(same_blocks, "BAND_BLOCK", block)
    r = ref["medium"]
    assert rel_err(ours["medium"].encode(mx.array(r["audio_pad"])), r["latents_pad"]) <= TOL
    assert rel_err(ours["medium"].decode(mx.array(r["latents"])), r["decoded"]) <= TOL


@pytest.mark.parametrize("name", DEEP)
def test_two_blocks(source, name):
    """Two resampling blocks a side, from a standalone (prefix-less) checkpoint: encode, decode, chunked,
    injected noise (one draw per decoder block)."""
    cfg = SAMEConfig.from_dict(json.loads((source / f"{name}_config.json").read_text()))
    assert [b.new_tokens for b in cfg.decoder] == [4, 2] and cfg.decoder[1].in_channels == 16
    ckpt = Checkpoint(read_tensors(source, stem=f"{name}_model"), name)
    model = load_same(cfg, SAME(cfg).sanitize(ckpt, ""))
    ckpt.finish(ignore=list(IGNORED))
    assert "mapping" not in model.encoder_blocks[0] and "mapping" not in model.decoder_blocks[1]
    r = load_file(str(source / f"{name}.safetensors"))
    assert model.latent_frames(r["audio"].shape[-1]) == r["latents"].shape[-1]
    assert rel_err(model.encode(mx.array(r["audio"])), r["latents"]) <= TOL
    assert rel_err(model.decode(mx.array(r["latents"])), r["decoded"]) <= TOL
    assert rel_err(model.decode_chunked(mx.array(r["chunk_latents"]), 4, 2), r["chunk_decoded"]) <= TOL
    assert rel_err(model.encode_chunked(mx.array(r["chunk_audio"]), 4, 2), r["chunk_encoded"]) <= TOL
    check_noise(model, r)


def test_bad_input(ours):
    model = ours["small"]
    with pytest.raises(UserError, match="audio"):
        model.encode(mx.zeros((1, 1, 256)))  # mono into a stereo codec
    with pytest.raises(UserError, match="audio"):
        model.encode(mx.zeros((2, 256)))
    with pytest.raises(UserError, match="latents"):
        model.decode(mx.zeros((1, 8, 4)))
    with pytest.raises(UserError, match="noise"):
        model.decode(mx.zeros((1, 16, 4)), noise=[mx.zeros((1, 4, 32))])
    with pytest.raises(UserError, match="latent_noise"):
        model.decode(mx.zeros((1, 16, 4)), latent_noise=mx.zeros((1, 16, 3)))
    with pytest.raises(UserError, match="overlap"):
        model.decode_chunked(mx.zeros((1, 16, 40)), 8, 8)
    with pytest.raises(UserError, match="overlap"):
        model.encode_chunked(mx.zeros((1, 2, 4096)), 0, 0)
