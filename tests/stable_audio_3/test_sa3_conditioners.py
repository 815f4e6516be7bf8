"""Stable Audio 3 conditioning parity (mlx_audio_generate.stable_audio_3.conditioners) with `stable_audio_3`'s
T5GemmaConditioner / NumberConditioner / MultiConditioner / get_conditioning_inputs, fp32, on the committed
tiny checkpoints (small: SAME-S, medium: differential DiT; the same T5Gemma design).

Reference outputs: the committed tests/fixtures/sa3/conditioning (tests/reference/sa3_conditioning.py) and,
where the reference sources are here, a fresh run of that script.

ExpoFourierFeatures multiplies the normalised seconds by up to 2 pi x 1e4: one float32 ulp in a frequency
moves a top feature by ~4e-3 rad at the clamp (x = 1). torch's CPU float32 exp is not correctly rounded (a few
of its 128 frequencies are one ulp off ours), so the parity of everything else is checked with the
reference's own frequencies injected (`expo_freqs`), and ours are checked against them separately: within
one ulp, and the whole seconds embedding within 1e-4 for seconds up to 120 without injection.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio_3.conditioners import (
    Conditioners,
    ConditioningConfig,
    NumberConditioner,
    NumberConditionerConfig,
    TextConditioner,
    TextTokenizers,
    conditioning_inputs,
    expo_frequencies,
    text_encoder_folder,
)
from mlx_audio_generate.text.t5gemma import T5GemmaConfig, T5GemmaTokenizer, t5gemma_ignore_patterns
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import sa3, sa3_conditioning
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
MODELS = ("small", "medium")
OTHER_CONVERTERS = [r"model\.model\..*", r"pretransform\.model\..*"]  # the DiT's and SAME's tensors


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    live = None if sa3.reference_root() is None else sa3_conditioning.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "conditioning", live), "conditioning")


def model_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "model_config.json").read_text())


def build(name: str) -> tuple[Conditioners, ConditioningConfig, TextTokenizers]:
    """Our conditioners of a checkpoint folder, every tensor of both checkpoints accounted for."""
    folder = FIXTURES / name
    cfg = ConditioningConfig.from_dict(model_config(name))
    t5dirs = {c.id: text_encoder_folder(c, folder) for c in cfg.text}
    t5cfgs = {
        cid: T5GemmaConfig.from_dict(json.loads((d / "config.json").read_text())) for cid, d in t5dirs.items()
    }
    conds = Conditioners(cfg, t5cfgs)
    ckpt = Checkpoint(read_tensors(folder), name="model.safetensors")
    weights = conds.sanitize(ckpt, "conditioner.conditioners.")
    ckpt.finish(ignore=OTHER_CONVERTERS)
    for cid, d in t5dirs.items():
        t5 = Checkpoint(read_tensors(d), name=f"{d}/model.safetensors")
        weights.update(conds.sanitize_encoder(cid, t5))
        t5.finish(ignore=t5gemma_ignore_patterns())
    conds.load_weights(list(weights.items()), strict=True)
    return conds, cfg, TextTokenizers(cfg, t5dirs)


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    return request.param, build(request.param)


def run(
    conds: Conditioners, cfg: ConditioningConfig, toks: TextTokenizers, meta: dict, arrays: dict, name: str
):
    tensors = conds({"prompt": toks("prompt", meta["prompts"]), "seconds_total": meta["seconds"]})
    local = {k: arrays[f"{name}.inpaint.{k[len('inpaint_') :]}"] for k in cfg.local_add_cond_ids}
    return tensors, conditioning_inputs(cfg, {**tensors, **local})


def test_config_reads_the_released_structure():
    cfg = ConditioningConfig.from_dict(model_config("small"))
    prompt, seconds = cfg.conditioners
    assert (prompt.id, prompt.max_length, prompt.padding_mode, prompt.output_dim) == (
        "prompt",
        32,
        "learned",
        768,
    )
    assert (seconds.min_val, seconds.max_val, seconds.fourier_features_type) == (0.0, 384.0, "expo")
    assert cfg.cross_attention_ids == ("prompt", "seconds_total") and cfg.global_cond_ids == (
        "seconds_total",
    )
    assert cfg.local_add_cond_ids == ("inpaint_mask", "inpaint_masked_input")


def test_assembled_conditioning(ref, built):
    """cross_attn_cond (prompt tokens || seconds token), its mask, global_cond and local_add_cond, with the
    reference's ExpoFourierFeatures frequencies injected (see the module doc)."""
    meta, arrays = ref
    name, (conds, cfg, toks) = built
    conds.conditioners["seconds_total"]._freqs = mx.array(arrays["expo_freqs"])
    try:
        tensors, out = run(conds, cfg, toks, meta, arrays, name)
    finally:
        conds.conditioners["seconds_total"]._freqs = mx.array(expo_frequencies(256))
    length = cfg.text[0].max_length
    cross = arrays[f"{name}.cross_attn_cond"]
    errors = {
        "prompt": rel_err(tensors["prompt"][0], cross[:, :length]),
        "seconds": rel_err(tensors["seconds_total"][0], cross[:, length:]),
        "cross_attn_cond": rel_err(out["cross_attn_cond"], cross),
        "global_cond": rel_err(out["global_cond"], arrays[f"{name}.global_cond"]),
    }
    assert max(errors.values()) <= TOL, errors
    np.testing.assert_array_equal(np.array(tensors["prompt"][1]), arrays[f"{name}.prompt_mask"].astype(bool))
    assert out["cross_attn_mask"].dtype == mx.float32  # bool || float ones -> float, as torch.cat promotes
    np.testing.assert_array_equal(np.array(out["cross_attn_mask"]), arrays[f"{name}.cross_attn_mask"])
    np.testing.assert_array_equal(np.array(out["local_add_cond"]), arrays[f"{name}.local_add_cond"])
    # padded prompt positions carry the learned padding embedding
    pad = np.array(conds.conditioners["prompt"].padding_embedding)
    hidden = ~arrays[f"{name}.prompt_mask"].astype(bool)
    np.testing.assert_array_equal(
        np.array(tensors["prompt"][0])[hidden], np.broadcast_to(pad, (hidden.sum(), 768))
    )


def test_own_expo_frequencies(ref, built):
    """Our frequencies (correctly rounded) vs the reference's: within one ulp; the seconds embedding without
    injection within 1e-4 up to 120 s (the clamp row, x = 1, is the ulp-sensitive one: measured, bounded)."""
    meta, arrays = ref
    name, (conds, cfg, toks) = built
    ours = expo_frequencies(256)
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - arrays["expo_freqs"].view(np.int32))
    assert ulps.max() <= 1, ulps.max()
    emb, _ = conds.conditioners["seconds_total"](meta["seconds"])
    ref_emb = arrays[f"{name}.global_cond"]
    rows = [i for i, s in enumerate(meta["seconds"]) if s <= 120]
    assert rel_err(np.array(emb)[rows, 0], ref_emb[rows]) <= TOL
    assert rel_err(emb[:, 0], ref_emb) <= 2e-3  # measured 4e-4 at the clamp row


def test_text_conditioner_variants(ref):
    """`project_out` + `padding_mode: "zero"` (Linear 768 -> 64), and `"none"` without projection."""
    meta, arrays = ref
    t5dir = FIXTURES / "small" / "t5gemma-b-b-ul2"
    t5cfg = T5GemmaConfig.from_dict(json.loads((t5dir / "config.json").read_text()))
    t5 = Checkpoint(read_tensors(t5dir))
    for name, spec in meta["text_variants"].items():
        info = {"id": "prompt", "type": "t5gemma", "config": spec["config"]}
        full = copy.deepcopy(model_config("small"))
        full["model"]["conditioning"]["configs"][0] = info
        cfg = ConditioningConfig.from_dict(full).text[0]
        cond = TextConditioner(cfg, t5cfg)
        prefix = f"var.{name}.param."
        params = {k[len(prefix) :]: mx.array(v) for k, v in arrays.items() if k.startswith(prefix)}
        ckpt = Checkpoint(params)
        weights = cond.sanitize(ckpt, "")
        ckpt.finish()
        weights.update({f"encoder.{k}": v for k, v in cond.encoder.sanitize(t5, "").items()})
        cond.load_weights(list(weights.items()), strict=True)
        ids, mask = T5GemmaTokenizer(t5dir)(spec["prompts"], cfg.max_length)
        states, keep = cond(mx.array(ids), mx.array(mask))
        assert rel_err(states, arrays[f"var.{name}.states"]) <= TOL, name
        np.testing.assert_array_equal(np.array(keep), arrays[f"var.{name}.mask"].astype(bool))


def test_learned_number_conditioner(ref):
    meta, arrays = ref
    spec = meta["number_variant"]
    c = spec["config"]
    cond = NumberConditioner(
        NumberConditionerConfig(
            id="n", output_dim=c["output_dim"], min_val=float(c["min_val"]), max_val=float(c["max_val"]),
            fourier_features_type=c["fourier_features_type"],
        )
    )  # fmt: skip
    params = {
        k[len("var.number.param.") :]: mx.array(v) for k, v in arrays.items() if "var.number.param." in k
    }
    ckpt = Checkpoint(params)
    cond.load_weights(list(cond.sanitize(ckpt, "").items()), strict=True)
    ckpt.finish()
    emb, mask = cond(spec["values"])
    assert rel_err(emb, arrays["var.number.embedding"]) <= TOL
    np.testing.assert_array_equal(np.array(mask), arrays["var.number.mask"])


@pytest.mark.parametrize("name", MODELS)
def test_strict_key_accounting(name):
    """The conditioner tensors of model.safetensors are exactly the three the reference persists."""
    conds, _, _ = build(name)
    ckpt = Checkpoint(read_tensors(FIXTURES / name))
    used = conds.sanitize(ckpt, "conditioner.conditioners.")
    assert sorted(ckpt.used) == [
        "conditioner.conditioners.prompt.padding_embedding",
        "conditioner.conditioners.seconds_total.embedder.embedding.1.bias",
        "conditioner.conditioners.seconds_total.embedder.embedding.1.weight",
    ]
    assert len(used) == 3
    with pytest.raises(UserError, match="lacks tensor 'x.prompt.padding_embedding'"):
        conds.sanitize(Checkpoint({}), "x.")


def _bad(edit):
    cfg = copy.deepcopy(model_config("small"))
    edit(cfg["model"])
    return cfg


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["conditioning"].pop("cond_dim"), "lacks 'cond_dim'"),
        (lambda m: m.pop("conditioning"), "lacks 'conditioning'"),
        (
            lambda m: m["conditioning"]["configs"][0]["config"].update(max_length="32"),
            "'max_length' must be int",
        ),
        (
            lambda m: m["conditioning"]["configs"][0]["config"].update(max_length=0),
            "max_length must be positive",
        ),
        (lambda m: m["conditioning"]["configs"][0]["config"].update(padding_mode="mean"), "padding_mode"),
        (lambda m: m["conditioning"]["configs"][0]["config"].update(project_out="yes"), "must be bool"),
        (lambda m: m["conditioning"]["configs"][0]["config"].update(model_name="t5-base"), "model_name"),
        (lambda m: m["conditioning"]["configs"][0]["config"].update(maxlen=3), "unknown field"),
        (lambda m: m["conditioning"]["configs"][1]["config"].update(min_val="0"), "'min_val' must be"),
        (lambda m: m["conditioning"]["configs"][1]["config"].update(max_val=-1), "must exceed"),
        (lambda m: m["conditioning"]["configs"][1]["config"].update(fourier_features_type="x"), "fourier"),
        (lambda m: m["conditioning"]["configs"][1].update(type="clap"), "unknown type 'clap'"),
        (lambda m: m["conditioning"]["configs"][1].pop("id"), "lacks 'id'"),
        (lambda m: m["conditioning"]["configs"].append(m["conditioning"]["configs"][0]), "duplicate"),
        (lambda m: m["diffusion"].update(global_cond_ids=["bpm"]), "names conditioner 'bpm'"),
        (lambda m: m["diffusion"].update(cross_attention_cond_ids="prompt"), "must be list"),
    ],
)
def test_bad_config(edit, match):
    with pytest.raises(UserError, match=match) as e:
        ConditioningConfig.from_dict(_bad(edit))
    assert "\n" not in str(e.value)


def test_bad_inputs(built):
    name, (conds, cfg, toks) = built
    with pytest.raises(UserError, match="'seconds_total' is missing"):
        conds({"prompt": toks("prompt", ["x"])})
    with pytest.raises(UserError, match="needs numbers"):
        conds.conditioners["seconds_total"](["ten"])
    tensors = conds({"prompt": toks("prompt", ["x"]), "seconds_total": [1.0]})
    with pytest.raises(UserError, match="inpaint_mask"):
        conditioning_inputs(cfg, tensors)
