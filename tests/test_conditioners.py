"""Parity of the Stable Audio conditioning (numbers, T5 post-processing, assembly) with stable-audio-tools."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio.conditioners import (
    ConditioningConfig,
    StableAudioConditioner,
    T5CondConfig,
    T5Conditioner,
    assemble,
    t5_condition,
)
from mlx_audio_generate.weights import Checkpoint
from tests.reference import require

torch = require("torch")
# transformers records which optional packages exist when first imported: import it before sat.py's stand-ins.
require("transformers")

TOL = 1e-4
STYLES = ["small", "1.0"]
META = [
    {"prompt": "a dog barking in the rain", "seconds_start": 3.5, "seconds_total": 10.0},
    {"prompt": "drums", "seconds_start": -4.0, "seconds_total": 900.0},  # both clamped
]


def rel(ours: mx.array, ref) -> float:
    ref = ref.detach().float().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    return float(np.abs(np.array(ours.astype(mx.float32)) - ref).max() / np.abs(ref).max())


def to_mx(t) -> mx.array:
    return mx.array(t.detach().numpy())


@pytest.fixture(scope="module", params=STYLES)
def tiny(request, tmp_path_factory):
    """(style, model_config dict, reference wrapper, our conditioner, t5 folder), built once per style."""
    from tests.reference.stable_audio import T5_DIM, save_tiny_stable_audio, tiny_config

    out, model = save_tiny_stable_audio(tmp_path_factory.mktemp(f"cond-{request.param}"), request.param)
    config = tiny_config(request.param)
    ours = StableAudioConditioner(ConditioningConfig.from_dict(config, t5_dim=T5_DIM))
    ckpt = Checkpoint({k: to_mx(v) for k, v in model.state_dict().items()}, name="tiny")
    ours.load_weights(list(ours.sanitize(ckpt).items()), strict=True)
    ckpt.finish(ignore=[r"model\..*", r"pretransform\..*"])  # every conditioner tensor is used
    return request.param, config, model, ours, out / "t5"


def ref_t5_hidden(model, texts: list[str], padding: str = "max_length"):
    """The raw encoder output of the reference conditioner's own (fp32) T5."""
    cond = model.conditioner.conditioners["prompt"]
    enc = cond.tokenizer(
        texts, truncation=True, max_length=cond.max_length, padding=padding, return_tensors="pt"
    )
    with torch.no_grad():
        out = cond.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return out["last_hidden_state"], enc["attention_mask"]


def test_config_from_dict():
    from tests.reference.stable_audio import tiny_config

    small = ConditioningConfig.from_dict(tiny_config("small"))
    assert small.cross_attention_cond_ids == ("prompt", "seconds_total")
    assert small.global_cond_ids == ("seconds_total",)
    assert small.t5["prompt"].max_length == 64 and small.t5["prompt"].t5_dim == 768
    assert small.t5["prompt"].has_proj  # t5-base (768) into a 32-wide cond_dim needs proj_out
    v1 = ConditioningConfig.from_dict(tiny_config("1.0"), t5_dim=32)
    assert v1.t5["prompt"].max_length == 128 and not v1.t5["prompt"].has_proj
    assert v1.global_cond_ids == ("seconds_start", "seconds_total")
    assert (v1.numbers["seconds_start"].min_val, v1.numbers["seconds_start"].max_val) == (0.0, 512.0)


def test_number_conditioner(tiny):
    """Embeddings `[x, sin, cos]` of the clamped, normalised values, inside and outside the range."""
    _, _, model, ours, _ = tiny
    values = [-5.0, 0.0, 3.3, 47.5, 255.9, 256.0, 511.0, 1000.0]
    for cid, mod in ours.numbers.items():
        ref_emb, ref_mask = model.conditioner.conditioners[cid](values, "cpu")
        emb, mask = mod(values)
        assert emb.shape == tuple(ref_emb.shape) == (len(values), 1, 32)
        assert rel(emb, ref_emb) <= TOL, cid
        assert np.array(mask).all() and tuple(mask.shape) == tuple(ref_mask.shape)


@pytest.mark.parametrize("trim", [False, True])
def test_full_conditioning(tiny, trim):
    """cross_attn_cond / mask / global_cond equal MultiConditioner + get_conditioning_inputs."""
    style, config, model, ours, _ = tiny
    with torch.no_grad():
        ref = model.get_conditioning_inputs(model.conditioner(META, "cpu"))
    # trim: encode only up to the longest prompt (as our T5 may); t5_condition pads to max_length.
    hidden, mask = ref_t5_hidden(model, [m["prompt"] for m in META], "longest" if trim else "max_length")
    assert hidden.shape[1] < 64 if trim else hidden.shape[1] in (64, 128)
    numbers = {k: [m[k] for m in META] for k in ("seconds_start", "seconds_total")}
    c = ours((to_mx(hidden), to_mx(mask)), numbers)
    assert c.cross_attn_cond.shape == tuple(ref["cross_attn_cond"].shape)
    assert rel(c.cross_attn_cond, ref["cross_attn_cond"]) <= TOL, style
    np.testing.assert_array_equal(np.array(c.cross_attn_mask), ref["cross_attn_mask"].bool().numpy())
    assert c.global_cond.shape == tuple(ref["global_cond"].shape)
    assert rel(c.global_cond, ref["global_cond"]) <= TOL, style
    # Padding tokens stay in the sequence as zeros (the DiT attends to them).
    s = config["model"]["conditioning"]["configs"][0]["config"]["max_length"]
    assert np.all(np.array(c.cross_attn_cond[1, int(mask[1].sum()) : s]) == 0)


def test_negative_conditioning_assembles_the_same(tiny):
    _, _, model, ours, _ = tiny
    with torch.no_grad():
        tensors = model.conditioner(META, "cpu")
        ref = model.get_conditioning_inputs(tensors, negative=True)
    ours_in = {k: (to_mx(v[0]), to_mx(v[1])) for k, v in tensors.items()}
    c = assemble(ours_in, ours.config.cross_attention_cond_ids, ours.config.global_cond_ids)
    assert rel(c.cross_attn_cond, ref["negative_cross_attn_cond"]) == 0
    assert rel(c.global_cond, ref["negative_global_cond"]) == 0
    np.testing.assert_array_equal(np.array(c.cross_attn_mask), ref["negative_cross_attn_mask"].bool().numpy())


def test_t5_proj_out(tiny):
    """A T5 conditioner whose width differs from cond_dim has a proj_out Linear before the mask multiply."""
    from stable_audio_tools.models.conditioners import T5Conditioner as RefT5Conditioner

    from tests.reference.stable_audio import T5_DIM, _tiny_t5_for_conditioner

    _, _, _, _, t5_dir = tiny
    with _tiny_t5_for_conditioner(t5_dir):
        ref = RefT5Conditioner(output_dim=48, t5_model_name="t5-base", max_length=16)
    ref.model.float()
    with torch.no_grad():
        for p in ref.proj_out.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
        texts = ["rain on a tin roof", "a slow piano"]
        expected, expected_mask = ref(texts, "cpu")
        enc = ref.tokenizer(texts, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
        hidden = ref.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[
            "last_hidden_state"
        ]
    ours = T5Conditioner(T5CondConfig(output_dim=48, t5_dim=T5_DIM, max_length=16))
    ckpt = Checkpoint({k: to_mx(v) for k, v in ref.state_dict().items()})
    ours.load_weights(list(ours.sanitize(ckpt, "").items()), strict=True)
    ckpt.finish()
    emb, mask = ours(to_mx(hidden), to_mx(enc["attention_mask"]))
    assert rel(emb, expected) <= TOL
    np.testing.assert_array_equal(np.array(mask), expected_mask.numpy())
    emb2, _ = t5_condition(to_mx(hidden), to_mx(enc["attention_mask"]), 16, ours.proj_out)
    assert rel(emb2, expected) <= TOL


def test_input_errors(tiny):
    _, _, _, ours, _ = tiny
    t5 = next(iter(ours.text.values())).config
    with pytest.raises(UserError, match="max_length"):
        t5_condition(mx.zeros((1, t5.max_length + 1, 32)), mx.ones((1, t5.max_length + 1)), t5.max_length)
    with pytest.raises(UserError, match="missing value for number conditioner 'seconds_"):
        ours((mx.zeros((1, 4, 32)), mx.ones((1, 4))), {})


def test_missing_and_extra_tensors(tiny):
    _, _, model, ours, _ = tiny
    state = {k: to_mx(v) for k, v in model.state_dict().items() if k.startswith("conditioner.")}
    missing = dict(state)
    del missing["conditioner.conditioners.seconds_total.embedder.embedding.0.weights"]
    with pytest.raises(UserError, match="seconds_total.embedder.embedding.0.weights"):
        ours.sanitize(Checkpoint(missing))
    extra = Checkpoint({**state, "conditioner.conditioners.prompt.proj_out.weight": mx.zeros((32, 32))})
    ours.sanitize(extra)
    with pytest.raises(UserError, match="proj_out"):
        extra.finish()


def test_unsupported_conditioner_is_refused():
    from tests.reference.stable_audio import tiny_config

    config = tiny_config("small")
    config["model"]["conditioning"]["configs"].append({"id": "x", "type": "clap_text", "config": {}})
    with pytest.raises(UserError, match="clap_text"):
        ConditioningConfig.from_dict(config)
