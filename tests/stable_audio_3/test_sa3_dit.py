"""Stable Audio 3 DiT parity: our MLX SA3DiT vs stable_audio_3's DiTWrapper on the tiny checkpoints, fp32.

small = plain attention, medium = differential attention. Reference outputs come from
`tests.reference.sa3_dit.make` (committed under tests/fixtures/sa3/dit/, and rerun live into a tmp dir when
the reference sources are present): single passes (t with 1.0 and 0.013, zero and inpainting local
conditions, a padding mask, the log-SNR timestep option) and batch-CFG at scale 4 with APG 1 / 0.5 / 0
(vanilla), a negative prompt and a padding mask.

The timestep features multiply t by up to 2*pi*1e4 in float32, so torch's CPU exp (within 1 ulp, not
correctly rounded) matters there: our frequencies are the exact ones, checked to be within 1 ulp of the
reference's, and the timestep embedding alone is compared with the reference's frequencies injected.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio_3 import dit as dit_module
from mlx_audio_generate.stable_audio_3.dit import SA3DiT, SA3DiTConfig, expo_frequencies
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference.parity import SOURCES, reference_outputs, rel_err
from tests.reference.sa3 import REPO, reference_root
from tests.reference.sa3_dit import CASES, MODELS, T_VALUES
from tests.spy import leading_dims

TOL = 1e-4
PREFIX = "model.model."
COMMITTED = REPO / "tests/fixtures/sa3/dit"
OTHER_PARTS = [r"(?!model\.model\.).*"]  # conditioners and the SAME autoencoder: not the DiT's


def folder(name: str):
    return REPO / "tests/fixtures/sa3" / name


def model_config(name: str) -> dict:
    return json.loads((folder(name) / "model_config.json").read_text())


def convert(name: str, logsnr: bool = False) -> SA3DiT:
    cfg = SA3DiTConfig.from_dict(model_config(name))
    if logsnr:
        cfg = dataclasses.replace(cfg, timestep_features_logsnr=True)
    ckpt = Checkpoint(read_tensors(folder(name)))
    model = SA3DiT(cfg)
    model.load_weights(list(model.sanitize(ckpt, PREFIX).items()), strict=True)
    ckpt.finish(ignore=OTHER_PARTS)
    return model


@pytest.fixture(scope="module")
def ours():
    return {(name, logsnr): convert(name, logsnr) for name in MODELS for logsnr in (False, True)}


@pytest.fixture(scope="module")
def live_dir(tmp_path_factory):
    if reference_root() is None:
        return None
    from tests.reference.sa3_dit import make

    return make(tmp_path_factory.mktemp("sa3_dit"))


@pytest.fixture(params=SOURCES)
def ref(request, live_dir):
    """name -> reference inputs and outputs: the committed fixtures, or a live run of the reference."""
    base = reference_outputs(request.param, COMMITTED, live_dir)
    return {name: load_file(str(base / f"{name}.safetensors")) for name in MODELS}


def inputs(arrays: dict) -> dict[str, mx.array]:
    return {k[3:]: mx.array(v) for k, v in arrays.items() if k.startswith("in.")}


def run_case(model: SA3DiT, a: dict[str, mx.array], case) -> mx.array:
    """Ours as the reference case was called: `__call__` at cfg 1, `cfg_condition` + `guided` otherwise."""
    local = a["local"] if case.local else None
    pad = a["padding_mask"] > 0.5 if case.padding else None
    if case.cfg == 1.0:
        assert not case.negative
        return model(a["x"], a[case.t], a["cross"], a["global"], local, a["cross_mask"], padding_mask=pad)
    neg = (a["neg_cross"], a["neg_mask"]) if case.negative else (None, None)
    cond = model.cfg_condition(a["cross"], a["global"], case.cfg, local, pad, *neg)
    assert cond.cfg_pair and cond.batch == 2 * a["x"].shape[0]
    return model.guided(a["x"], a[case.t], cond, case.cfg, case.apg)


def test_live_inputs_match_committed(ref):
    """The fixture inputs are deterministic: a live run rebuilds the committed ones, the random ones exactly;
    the conditioner's (T5Gemma) to float32 rounding (its BLAS sums in another order inside pytest)."""
    for name in MODELS:
        committed = load_file(str(COMMITTED / f"{name}.safetensors"))
        for key in committed:
            if key in ("in.cross", "in.global", "in.neg_cross"):
                assert rel_err(mx.array(ref[name][key]), committed[key]) <= 1e-5, key
            elif key.startswith("in."):
                np.testing.assert_array_equal(ref[name][key], committed[key])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("name", MODELS)
def test_parity(ours, ref, name, case):
    model = ours[(name, case.logsnr)]
    out = run_case(model, inputs(ref[name]), case)
    assert rel_err(out, ref[name][f"out.{case.name}"]) <= TOL


@pytest.mark.parametrize("name", MODELS)
def test_timestep_embedding(ours, ref, name):
    """Our frequencies are the exact float32 ones: within 1 ulp of torch's (most identical); with torch's
    frequencies injected the embedding matches to float32 rounding, with and without the log-SNR map."""
    mine, theirs = expo_frequencies(256), ref[name]["ref.expo_freqs"]
    assert np.all(np.abs(mine - theirs) <= np.spacing(theirs)) and np.mean(mine == theirs) > 0.9
    a = inputs(ref[name])
    for logsnr, key in ((False, "temb"), (True, "temb_logsnr")):
        model = ours[(name, logsnr)]
        saved = model._expo_freqs
        model._expo_freqs = mx.array(theirs)
        try:
            for t in T_VALUES:
                assert rel_err(model.timestep_embed(a[t]), ref[name][f"{key}.{t}"]) <= 1e-5
        finally:
            model._expo_freqs = saved


@pytest.mark.parametrize("name", MODELS)
def test_local_zeros_equal_none(ours, ref, name):
    """local_add_cond=None (one constant embedding per block) is the all-zero local condition."""
    model, a = ours[(name, False)], inputs(ref[name])
    zeros = mx.zeros_like(a["local"])
    want = model(a["x"], a["tb"], a["cross"], a["global"], zeros)
    got = model(a["x"], a["tb"], a["cross"], a["global"], None)
    assert rel_err(got, np.array(want)) <= 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_null_context_adds_exactly_zero(ours, ref, name):
    """Why a CFG pair's unconditional half may skip its cross-attention: the null context's values are zero
    (no bias in `to_cond_embed` or `kv`), so the attention's output (both maps of differential attention)
    and `out` of it are exactly 0 whatever the queries and keys."""
    model, a = ours[(name, False)], inputs(ref[name])
    cond = model.cfg_condition(a["cross"], a["global"], 4.0)
    assert cond.null_uncond
    b = a["x"].shape[0]
    h = mx.random.normal((b, 7, model.config.embed_dim))
    for blk, kv in zip(model.blocks, cond.kv, strict=True):
        assert not mx.any(kv[-1][b:]).item()
        out = blk.cross_attn.cross(h, tuple(t[b:] for t in kv), residual=mx.zeros_like(h))
        assert mx.all(out == 0).item()


@pytest.mark.parametrize("name", MODELS)
def test_skipping_the_null_half_changes_nothing(ours, ref, name):
    model, a = ours[(name, False)], inputs(ref[name])
    pad = a["padding_mask"] > 0.5
    cond = model.cfg_condition(a["cross"], a["global"], 4.0, a["local"], pad)
    assert not model.cfg_condition(a["cross"], a["global"], 4.0, None, None, a["neg_cross"]).null_uncond
    skipped = model.guided(a["x"], a["ta"], cond, 4.0, 0.5)
    full = model.guided(a["x"], a["ta"], dataclasses.replace(cond, null_uncond=False), 4.0, 0.5)
    # float32 rounding only: the cross-attention GEMMs sum half the rows, CFG at 4 amplifies the difference
    assert rel_err(skipped, np.array(full)) <= 1e-5


@pytest.mark.parametrize("null", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_sharing_the_first_self_attention_changes_nothing(ours, ref, name, null):
    """The pair's halves are equal until block 0's cross-attention, so its self-attention runs on B rows
    (with the inpainting condition and a padding mask, which both halves share)."""
    model, a = ours[(name, False)], inputs(ref[name])
    pad = a["padding_mask"] > 0.5
    cond = dataclasses.replace(
        model.cfg_condition(a["cross"], a["global"], 4.0, a["local"], pad), null_uncond=null
    )
    with leading_dims(model.blocks[0].self_attn) as rows:
        try:
            shared = model.guided(a["x"], a["ta"], cond, 4.0, 0.5)
            model.share_first = False
            whole = model.guided(a["x"], a["ta"], cond, 4.0, 0.5)
        finally:
            model.share_first = True
    b = a["x"].shape[0]
    assert rows == [b, 2 * b]
    # float32 rounding only: block 0's GEMMs sum half the rows, CFG at 4 amplifies the difference
    assert rel_err(shared, np.array(whole)) <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_cfg_scale_one_is_single_pass(ours, ref, name):
    model, a = ours[(name, False)], inputs(ref[name])
    cond = model.cfg_condition(a["cross"], a["global"], 1.0)
    assert not cond.cfg_pair and cond.batch == 2
    got = model.guided(a["x"], a["ta"], cond, 1.0)
    assert rel_err(got, ref[name]["out.cfg1_ta"]) <= TOL


@pytest.mark.parametrize("name", MODELS)
def test_compiled_equals_eager(ours, ref, name, monkeypatch):
    """The mx.compile'd forward and guided paths (the GPU default) against the eager ones, on the CPU."""
    model, a = ours[(name, False)], inputs(ref[name])
    pad = a["padding_mask"] > 0.5
    single = model.condition(a["cross"], a["global"], a["local"], pad)
    pair = model.cfg_condition(a["cross"], a["global"], 4.0, None, None, a["neg_cross"], a["neg_mask"])
    null = model.cfg_condition(a["cross"], a["global"], 4.0)  # the null half skipped
    runs = {
        "forward": lambda: model.forward(a["x"], a["tb"], single),
        "guided": lambda: model.guided(a["x"], a["ta"], pair, 4.0, 0.5),
        "guided, null half skipped": lambda: model.guided(a["x"], a["ta"], null, 4.0, 0.5),
    }
    for label, run in runs.items():
        model.compiled = False
        eager = np.array(run())
        monkeypatch.setattr(dit_module, "_on_gpu", lambda: True)
        model.compiled = None
        try:
            got = run()
        finally:
            monkeypatch.undo()
        assert rel_err(got, eager) <= 1e-5, label
    assert len(model._jit.fns) >= 3


@pytest.mark.parametrize("name", MODELS)
def test_config(name):
    c = SA3DiTConfig.from_dict(model_config(name))
    assert (c.io_channels, c.embed_dim, c.depth, c.num_heads, c.head_dim, c.rotary_dim) == (
        16,
        128,
        2,
        2,
        64,
        32,
    )
    assert (c.cond_token_dim, c.global_cond_dim, c.local_add_cond_dim, c.num_memory_tokens) == (
        768,
        768,
        17,
        4,
    )
    assert c.differential == (name == "medium") and c.norm_force_fp32 and c.norm_eps == 1e-5
    assert c.qk_norm_eps == 1e-6 and c.ff_mult == 4 and c.diffusion_objective == "rf_denoiser"
    d = model_config(name)["model"]["diffusion"]
    assert SA3DiTConfig.from_dict(d) == c  # the `model.diffusion` entry gives the same config
    assert SA3DiTConfig.from_dict(dict(d["config"], diffusion_objective="rf_denoiser")) == c


@pytest.mark.parametrize("name", MODELS)
def test_key_accounting(name):
    """Every `model.model.*` tensor is used (the rotary inv_freq buffer checked), and nothing else."""
    ckpt = Checkpoint(read_tensors(folder(name)))
    model = SA3DiT(SA3DiTConfig.from_dict(model_config(name)))
    weights = model.sanitize(ckpt, PREFIX)
    ckpt.finish(ignore=OTHER_PARTS)
    assert all(k.startswith(PREFIX) for k in ckpt.used)
    assert len(ckpt.used) == sum(k.startswith(PREFIX) for k in ckpt.keys())
    model.load_weights(list(weights.items()), strict=True)  # every parameter of ours is given
    extra = dict(read_tensors(folder(name)), **{f"{PREFIX}transformer.layers.0.lambda_q": mx.zeros((4,))})
    ckpt = Checkpoint(extra)
    model.sanitize(ckpt, PREFIX)
    with pytest.raises(UserError, match="lambda_q"):  # a DiT tensor we do not use is an error
        ckpt.finish(ignore=OTHER_PARTS)
    tensors = dict(read_tensors(folder(name)))
    tensors[f"{PREFIX}transformer.rotary_pos_emb.inv_freq"] = (
        tensors[f"{PREFIX}transformer.rotary_pos_emb.inv_freq"] * 2
    )
    with pytest.raises(UserError, match="inv_freq"):
        model.sanitize(Checkpoint(tensors), PREFIX)
    del tensors[f"{PREFIX}transformer.memory_tokens"]
    with pytest.raises(UserError, match="memory_tokens"):
        model.sanitize(Checkpoint(tensors), PREFIX)


def _bad(mutate) -> dict:
    d = copy.deepcopy(model_config("medium"))
    mutate(d["model"]["diffusion"])
    return d


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(type="mmdit"), "type"),
        (lambda d: d.update(diffusion_objective="v"), "diffusion_objective"),
        (
            lambda d: d.update(modular_local_cond_configs=[{"id": "x", "dim": 4}]),
            "modular_local_cond_configs",
        ),
        (lambda d: d["config"].update(global_cond_type="prepend"), "global_cond_type"),
        (lambda d: d["config"].update(timestep_features_type="learned"), "timestep_features_type"),
        (lambda d: d["config"].update(patch_size=2), "patch_size"),
        (lambda d: d["config"].update(sliding_window=[4, 4]), "sliding_window"),
        (lambda d: d["config"].update(num_heads=3), "num_heads"),
        (lambda d: d["config"].update(embed_dim=0), "embed_dim"),
        (lambda d: d["config"].update(cond_token_dim=0), "cond_token_dim"),
        (lambda d: d["config"].update(norm_type="layer_norm"), "norm_type"),
        (lambda d: d["config"].update(attn_kwargs={"qk_norm": "ln"}), "attn_kwargs"),
        (lambda d: d["config"].update(attn_kwargs={"qk_norm": "rms", "feat_scale": True}), "attn_kwargs"),
        (lambda d: d["config"].update(ff_kwargs={"mult": 4, "glu": False}), "ff_kwargs"),
        (lambda d: d["config"].update(norm_kwargs={"fix_scale": True}), "norm_kwargs"),
        (lambda d: d["config"].update(conformer=True), "conformer"),
        (lambda d: d["config"].update(some_new_option=1), "some_new_option"),
        (lambda d: d["config"].update(depth="2"), "depth"),
    ],
)
def test_bad_config(mutate, match):
    with pytest.raises(UserError, match=match):
        SA3DiTConfig.from_dict(_bad(mutate))


def test_bad_inputs():
    model = SA3DiT(SA3DiTConfig.from_dict(model_config("small")))
    x, t = mx.zeros((2, 16, 12)), mx.ones((2,))
    cross, glob = mx.zeros((2, 5, 768)), mx.zeros((2, 768))
    with pytest.raises(UserError, match="cross_attn_cond"):
        model(x, t, mx.zeros((2, 5, 64)), glob)
    with pytest.raises(UserError, match="global_cond"):
        model(x, t, cross, mx.zeros((2, 64)))
    with pytest.raises(UserError, match="local_add_cond"):
        model(x, t, cross, glob, mx.zeros((2, 16, 12)))
    with pytest.raises(UserError, match="length"):
        model(x, t, cross, glob, mx.zeros((2, 17, 10)))
    with pytest.raises(UserError, match="batch"):
        model(mx.zeros((3, 16, 12)), t, cross, glob)
    with pytest.raises(UserError, match="x must be"):
        model(mx.zeros((2, 8, 12)), t, cross, glob)
    with pytest.raises(UserError, match="negative"):
        model.cfg_condition(cross, glob, 4.0, negative_cross_attn_cond=mx.zeros((2, 6, 768)))
