"""ACE-Step 1.5 DiT parity: our MLX AceStepDiTModel, schedules, APG and sampling loops vs the original PyTorch
code (`acestep`, upstream 6d467e4) on the committed tiny turbo / base checkpoints, fp32.

Reference outputs come from `tests.reference.ace_dit.make` (committed under tests/fixtures/ace/dit/,
rerun live into a tmp dir when ../shared/reference is present): decoder passes (t = 1 and a small t,
timestep_r != t, an odd length, a padded condition sequence and latent mask, which the reference ignores),
two passes sharing the reference's cross-attention cache, `apg_forward` on fixed tensors, and
`generate_audio` runs with the seeded noise injected into ours (`dcw_enabled=False`, explicit shift /
infer_steps / seed; `prepare_condition` replaced by a fixed condition: the condition encoder is another
module's).
"""

from __future__ import annotations

import copy
import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from mlx_audio_generate.ace_step import schedule as S
from mlx_audio_generate.ace_step.dit import AceCondition, AceDiTConfig, AceStepDiTModel, sliding_mask
from mlx_audio_generate.diffusion.flow_guidance import MomentumBuffer, apg, cfg
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference.ace import REPO, reference_root
from tests.reference.ace_dit import CASES, GENS, MODELS
from tests.reference.parity import SOURCES, reference_outputs, rel_err

TOL = 1e-4
COMMITTED = REPO / "tests/fixtures/ace/dit"
# The condition encoder, audio tokenizer and detokenizer are another module's (their own tests account for
# them); null_condition_emb is taken by the CFG test below.
OTHER_PARTS = [r"encoder\..*", r"tokenizer\..*", r"detokenizer\..*", r"null_condition_emb"]


def folder(variant: str):
    return REPO / "tests/fixtures/ace" / f"acestep-v15-{variant}"


def config(variant: str) -> dict:
    return json.loads((folder(variant) / "config.json").read_text())


def convert(variant: str) -> tuple[AceStepDiTModel, Checkpoint]:
    ckpt = Checkpoint(read_tensors(folder(variant)), f"acestep-v15-{variant}")
    model = AceStepDiTModel(AceDiTConfig.from_dict(config(variant)))
    model.load_weights(list(model.sanitize(ckpt, "decoder.").items()), strict=True)
    ckpt.finish(ignore=OTHER_PARTS)
    return model, ckpt


@pytest.fixture(scope="module")
def ours():
    return {v: convert(v) for v in MODELS}


@pytest.fixture(scope="module")
def live_dir(tmp_path_factory):
    if reference_root() is None:
        return None
    from tests.reference.ace_dit import make

    return make(tmp_path_factory.mktemp("ace_dit"))


@pytest.fixture(params=SOURCES)
def ref(request, live_dir):
    """name -> reference arrays: the committed fixtures, or a live run of the reference."""
    base = reference_outputs(request.param, COMMITTED, live_dir)
    return {name: load_file(str(base / f"{name}.safetensors")) for name in (*MODELS, "apg")}


def inputs(arrays: dict) -> dict[str, mx.array]:
    return {k[3:]: mx.array(v) for k, v in arrays.items() if k.startswith("in.")}


def test_live_inputs_match_committed(ref):
    """The fixture inputs and the seeded noise are deterministic: a live run rebuilds the committed ones."""
    for name in (*MODELS, "apg"):
        committed = load_file(str(COMMITTED / f"{name}.safetensors"))
        assert set(committed) == set(ref[name])
        for key in committed:
            if key.startswith("in.") or key.endswith(
                (".noise", ".times", ".cfg_interval", ".cond", ".uncond")
            ):
                np.testing.assert_array_equal(ref[name][key], committed[key], err_msg=key)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("variant", MODELS)
def test_decoder_parity(ours, ref, variant, case):
    model, a = ours[variant][0], inputs(ref[variant])
    r = a[case.r] if case.r else None
    out = model(a["x"], a[case.t], a["context"], a["enc"], timestep_r=r)
    assert rel_err(out, ref[variant][f"out.{case.name}"]) <= TOL


@pytest.mark.parametrize("variant", MODELS)
def test_masks_have_no_effect(ours, ref, variant):
    """The reference resets both masks inside forward: with the padded masks it equals the no-mask call
    bit for bit, and ours (which takes no mask) attends the padded condition tokens as it does."""
    r = ref[variant]
    np.testing.assert_array_equal(r["out.ta"], r["out.nomask"])
    a = inputs(r)
    assert float(a["enc_mask"].min()) == 0 and float(a["mask"].min()) == 0  # the inputs do have padding
    dropped = ours[variant][0](a["x"], a["ta"], a["context"], a["enc"][:, :6])  # padding cut instead
    assert rel_err(dropped, r["out.ta"]) > 1e-3


@pytest.mark.parametrize("variant", MODELS)
def test_cached_condition(ours, ref, variant):
    """One AceCondition serves several steps, as the reference's cross-attention cache does."""
    model, a = ours[variant][0], inputs(ref[variant])
    cond = model.condition(a["enc"])
    assert isinstance(cond, AceCondition) and cond.batch == 2 and len(cond.kv) == 2
    first = model(a["x"], a["ta"], a["context"], cond)
    second = model(a["x"][:, ::-1], a["tb"], a["context"], cond)
    assert rel_err(first, ref[variant]["out.cached_1"]) <= TOL
    assert rel_err(second, ref[variant]["out.cached_2"]) <= TOL


def test_sliding_mask_is_the_reference_window():
    m = np.array(sliding_mask(7, 2))
    i, j = np.indices((7, 7))
    np.testing.assert_array_equal(m, np.abs(i - j) <= 2)


# ---------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("gen", GENS["turbo"], ids=[g.name for g in GENS["turbo"]])
def test_turbo_schedule_exact(ref, gen):
    times = ref["turbo"][f"gen.{gen.name}.times"]  # (calls, B): the t every decoder call got
    np.testing.assert_array_equal(S.turbo_schedule(gen.shift, gen.infer_steps), times[:, 0])
    assert (times == times[:, :1]).all()


def test_turbo_tables():
    """The fixed 8-step tables are the shift map of 1 - i/8 (what generate_audio's table holds)."""
    for shift, table in S.TURBO_TABLES.items():
        s = np.array([1 - i / 8 for i in range(8)])
        np.testing.assert_allclose(table, shift * s / (1 + (shift - 1) * s), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(S.turbo_schedule(1.5), np.float32(S.TURBO_TABLES[1.0]))  # tie: the smaller
    assert len(S.turbo_schedule(3.0, 50)) == S.MAX_TURBO_STEPS


@pytest.mark.parametrize("gen", GENS["base"], ids=[g.name for g in GENS["base"]])
def test_base_schedule_exact(ref, gen):
    times = ref["base"][f"gen.{gen.name}.times"]
    sched = S.base_schedule(gen.infer_steps, gen.shift)
    assert sched[-1] == 0 and len(sched) == gen.infer_steps + 1
    np.testing.assert_array_equal(sched[:-1], times[:, 0])


def test_torch_linspace_formula():
    torch = pytest.importorskip("torch", reason="torch checks the linspace formula (the reference's kernel)")
    for n in [*range(1, 400), 511, 1000, 1999]:
        np.testing.assert_array_equal(S.torch_linspace_1_0(n), torch.linspace(1.0, 0.0, n + 1).numpy())
        for shift in (2.0, 3.0, 2.5):
            t = torch.linspace(1.0, 0.0, n + 1)
            np.testing.assert_array_equal(
                S.base_schedule(n, shift), (shift * t / (1 + (shift - 1) * t)).numpy()
            )


def test_cfg_interval_compares_in_float32():
    t = np.float32(0.3)
    assert S.in_interval(t, (0.0, 0.3)) and S.in_interval(t, (0.30000001, 1.0))  # both round to float32 0.3
    assert float(t) > 0.3 and not S.in_interval(t, (0.0, 0.2999999))


def test_bad_schedule_arguments():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UserError):
            S.base_schedule(bad)
        with pytest.raises(UserError):
            S.turbo_schedule(3.0, bad)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "3"):
        with pytest.raises(UserError):
            S.turbo_schedule(bad)


# --------------------------------------------------------------------------------------------------- APG


def test_apg_parity(ref):
    """apg_forward with a momentum buffer over three steps (clipped, clipped, unclipped), eta 0.5, 3000
    frames, a difference nearly parallel to cond: the reference projects in float64, ours in float32."""
    r = ref["apg"]
    a = {k: mx.array(v) for k, v in r.items()}
    buf = MomentumBuffer()
    errs = {}
    for i, scale in enumerate((7.0, 7.0, 4.0)):
        out = apg(a[f"step{i}.cond"], a[f"step{i}.uncond"], scale, buf, axes=(1,))
        errs[f"step{i}"] = rel_err(out, r[f"step{i}.out"])
    errs["eta"] = rel_err(apg(a["eta.cond"], a["eta.uncond"], 5.0, axes=(1,), eta=0.5), r["eta.out"])
    errs["long"] = rel_err(apg(a["long.cond"], a["long.uncond"], 7.0, axes=(1,)), r["long.out"])
    errs["parallel"] = rel_err(
        apg(a["parallel.cond"], a["parallel.uncond"], 7.0, axes=(1,)), r["parallel.out"]
    )
    assert max(errs.values()) <= 1e-6, errs
    # step 2 is the unclipped one; without the buffer's history it would differ
    alone = apg(a["step2.cond"], a["step2.uncond"], 4.0, axes=(1,))
    assert rel_err(alone, r["step2.out"]) > 1e-2


def test_cfg_formula():
    c, u = mx.array([1.0, 2.0]), mx.array([0.5, 3.0])
    np.testing.assert_allclose(np.array(cfg(c, u, 3.0)), [2.0, 0.0])


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("gen", GENS["turbo"], ids=[g.name for g in GENS["turbo"]])
def test_turbo_generate(ours, ref, gen):
    model, r = ours["turbo"][0], ref["turbo"]
    a, p = inputs(r), f"gen.{gen.name}."
    np.testing.assert_array_equal(r[p + "enc"], r["in.enc"])  # the decoder got our fixed condition
    np.testing.assert_array_equal(r[p + "context"], r["in.context"])
    out = S.sample_turbo(
        model, mx.array(r[p + "noise"]), a["context"], a["enc"], S.turbo_schedule(gen.shift, gen.infer_steps)
    )
    assert rel_err(out, r[p + "out"]) <= TOL


@pytest.mark.parametrize("gen", GENS["base"], ids=[g.name for g in GENS["base"]])
def test_base_generate(ours, ref, gen):
    (model, ckpt), r = ours["base"], ref["base"]
    a, p = inputs(r), f"gen.{gen.name}."
    null = ckpt.take("null_condition_emb")
    interval = tuple(float(v) for v in r[p + "cfg_interval"])
    want_batch = 2 * 2 if gen.guidance > 1 else 2
    assert r[p + "enc"].shape[0] == want_batch  # CFG ran as one [cond, null] batch
    steps = []
    out = S.sample_base(
        model, mx.array(r[p + "noise"]), a["context"], a["enc"], null,
        S.base_schedule(gen.infer_steps, gen.shift), gen.guidance, interval,
        on_step=lambda i, t: steps.append(t),
    )  # fmt: skip
    assert len(steps) == gen.infer_steps
    assert rel_err(out, r[p + "out"]) <= TOL


def test_cfg_interval_edge_is_float32(ours, ref):
    """The 'edge' run's interval lies a hair inside two schedule values: compared in float64 it would leave
    them out, and the result would not match the reference."""
    (model, ckpt), r = ours["base"], ref["base"]
    gen = next(g for g in GENS["base"] if g.cfg_interval == "edge")
    a, p = inputs(r), f"gen.{gen.name}."
    start, end = (float(v) for v in r[p + "cfg_interval"])
    sched = S.base_schedule(gen.infer_steps, gen.shift)
    assert start > float(sched[5]) and S.in_interval(sched[5], (start, end))
    wrong = S.sample_base(
        model, mx.array(r[p + "noise"]), a["context"], a["enc"], ckpt.take("null_condition_emb"),
        sched, gen.guidance, (float(sched[5]) + 1e-6, float(sched[2]) - 1e-6),
    )  # fmt: skip
    assert rel_err(wrong, r[p + "out"]) > 1e-3


# ------------------------------------------------------------------------------------ config and weights


XL = {  # acestep-v15-xl-* (reference README §6.2): a 2560-wide DiT reading 2048-wide conditions
    "model_type": "acestep", "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "encoder_hidden_size": 2048,
    "encoder_intermediate_size": 6144, "encoder_num_attention_heads": 16, "encoder_num_key_value_heads": 8,
    "rope_theta": 1000000, "rope_scaling": None, "sliding_window": 128, "in_channels": 192,
    "audio_acoustic_hidden_dim": 64, "patch_size": 2, "is_turbo": False, "model_version": "xl_base",
}  # fmt: skip


def test_config():
    c = AceDiTConfig.from_dict(config("turbo"))
    assert (c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        64, 128, 2, 4, 2, 16,
    )  # fmt: skip
    assert (c.sliding_window, c.layer_types, c.in_channels, c.acoustic_dim, c.context_dim) == (
        4, ("sliding_attention", "full_attention"), 24, 8, 16,
    )  # fmt: skip
    assert (c.encoder_hidden_size, c.rope_theta, c.rms_norm_eps, c.is_turbo) == (64, 1e6, 1e-6, True)
    assert not AceDiTConfig.from_dict(config("base")).is_turbo
    two_b = AceDiTConfig.from_dict({"model_type": "acestep"})  # AceStepConfig's defaults = the 2B DiT
    assert (two_b.hidden_size, two_b.num_layers, two_b.encoder_hidden_size, two_b.sliding_window) == (
        2048, 24, 2048, 128,
    )  # fmt: skip
    assert two_b.layer_types[:3] == ("sliding_attention", "full_attention", "sliding_attention")
    xl = AceDiTConfig.from_dict(XL)
    assert (xl.hidden_size, xl.num_layers, xl.num_heads, xl.encoder_hidden_size, xl.intermediate_size) == (
        2560, 32, 32, 2048, 9728,
    )  # fmt: skip
    tiny = {"hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    tiny |= {"num_key_value_heads": 2, "head_dim": 16, "encoder_hidden_size": 48}
    small_xl = AceStepDiTModel(AceDiTConfig.from_dict(dict(XL, **tiny)))
    assert small_xl.condition_embedder.weight.shape == (64, 48)
    assert not AceDiTConfig.from_dict(dict(config("turbo"), use_sliding_window=False)).sliding_window


@pytest.mark.parametrize(
    "change",
    [
        {"model_type": "qwen3"},
        {"hidden_act": "gelu"},
        {"hidden_size": 0},
        {"num_hidden_layers": "2"},
        {"num_attention_heads": 3},
        {"head_dim": 15},
        {"layer_types": ["sliding_attention"]},
        {"layer_types": ["sliding_attention", "chunked_attention"]},
        {"sliding_window": -1},
        {"in_channels": 23},
        {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6}},
        {"rope_theta": "big"},
        {"rms_norm_eps": 0},
        {"attention_bias": "no"},
        {"encoder_hidden_size": True},
    ],
    ids=lambda c: next(iter(c)),
)
def test_bad_config(change):
    with pytest.raises(UserError):
        AceDiTConfig.from_dict(dict(config("turbo"), **change))


def test_strict_keys():
    tensors = read_tensors(folder("turbo"))
    model = AceStepDiTModel(AceDiTConfig.from_dict(config("turbo")))
    extra = Checkpoint(dict(tensors, **{"decoder.layers.0.extra.weight": mx.zeros((2,))}))
    model.sanitize(extra)
    with pytest.raises(UserError, match="decoder.layers.0.extra.weight"):
        extra.finish(ignore=OTHER_PARTS)
    missing = {k: v for k, v in tensors.items() if k != "decoder.proj_out.1.bias"}
    with pytest.raises(UserError, match="proj_out.1.bias"):
        model.sanitize(Checkpoint(missing))
    wrong = AceStepDiTModel(AceDiTConfig.from_dict(dict(config("turbo"), intermediate_size=96)))
    with pytest.raises(UserError, match="do not belong together"):
        wrong.sanitize(Checkpoint(tensors))
    left = Checkpoint(tensors)
    model.sanitize(left)
    with pytest.raises(UserError, match="null_condition_emb"):  # the other parts are only ignored by name
        left.finish(ignore=OTHER_PARTS[:3])


def test_bad_inputs(ours):
    model = ours["turbo"][0]
    x, ctx, enc, t = mx.zeros((2, 5, 8)), mx.zeros((2, 5, 16)), mx.zeros((2, 3, 64)), mx.ones((2,))
    for args in (
        (mx.zeros((2, 5, 7)), t, ctx, enc),
        (x, t, mx.zeros((2, 4, 16)), enc),
        (x, mx.ones((3,)), ctx, enc),
        (x, t, ctx, mx.zeros((2, 3, 32))),
        (x, t, ctx, mx.zeros((1, 3, 64))),
    ):
        with pytest.raises(UserError):
            model(*args)


def test_no_mutation_of_config_dict():
    d = config("turbo")
    before = copy.deepcopy(d)
    AceDiTConfig.from_dict(d)
    assert d == before
