"""T5Gemma encoder + tokenizer parity (mlx_audio_generate.text.t5gemma) with transformers 5.x as Stable
Audio 3's T5GemmaConditioner runs them, on the T5Gemma bundled with the committed tiny checkpoints (fp32).

Every comparison is against reference outputs: the committed tests/fixtures/sa3/conditioning (made by
tests/reference/sa3_conditioning.py) and, where the reference sources are here, a fresh run of that script.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.text.t5gemma import (
    T5GemmaConfig,
    T5GemmaEncoder,
    T5GemmaTokenizer,
    load_t5gemma,
    t5gemma_ignore_patterns,
)
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import sa3, sa3_conditioning
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
T5DIRS = {m: FIXTURES / m / "t5gemma-b-b-ul2" for m in ("small", "medium")}


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    """(meta, arrays) of the committed fixture, or of make() rerun now (needs the reference sources)."""
    live = None if sa3.reference_root() is None else sa3_conditioning.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "conditioning", live), "conditioning")


@pytest.fixture(scope="module")
def encoder() -> T5GemmaEncoder:
    return load_t5gemma(T5DIRS["small"])


# -------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("model", ["small", "medium"])
def test_tokens_identical(ref, model):
    meta, arrays = ref
    ids, mask = T5GemmaTokenizer(T5DIRS[model])(meta["prompts"], 32)
    np.testing.assert_array_equal(ids, arrays["tokens.input_ids"])
    np.testing.assert_array_equal(mask, arrays["tokens.attention_mask"])
    # the original prepends <bos> (tokenizer.json's template), adds no <eos>, pads right with <pad>
    assert (ids[:, 0] == 2).all() and not (ids == 1).any()
    assert ids[1].tolist().count(0) == 0 and mask[1].all()  # the long prompt fills max_length: truncated


@pytest.mark.parametrize("variant", list(sa3_conditioning.TOKENIZER_VARIANTS))
def test_tokenizer_config_variants(ref, variant, tmp_path):
    """transformers' tokenizer_config.json rules: GemmaTokenizer rebuilds the backend and pads left by
    default, padding/truncation sides, add_bos/add_eos_token ignored beside a tokenizer.json."""
    meta, arrays = ref
    base = json.loads((T5DIRS["small"] / "tokenizer_config.json").read_text())
    shutil.copy(T5DIRS["small"] / "tokenizer.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({**base, **meta["tokenizer_variants"][variant]})
    )
    ids, mask = T5GemmaTokenizer(tmp_path)(meta["prompts"], meta["tokvar_length"])
    np.testing.assert_array_equal(ids, arrays[f"tokvar.{variant}.input_ids"])
    np.testing.assert_array_equal(mask, arrays[f"tokvar.{variant}.attention_mask"])


def test_tokenizer_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        T5GemmaTokenizer(tmp_path)
    shutil.copy(T5DIRS["small"] / "tokenizer.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(UserError, match="unsupported tokenizer_class"):
        T5GemmaTokenizer(tmp_path)
    tok = T5GemmaTokenizer(T5DIRS["small"])
    for bad in (0, -3, "32", True):
        with pytest.raises(UserError, match="max_length"):
            tok(["x"], bad)
    with pytest.raises(UserError, match="strings"):
        tok([3], 8)


# ---------------------------------------------------------------------------------------------- encoder


def test_last_hidden_state(ref, encoder):
    _, arrays = ref
    out = encoder(mx.array(arrays["tokens.input_ids"]), mx.array(arrays["tokens.attention_mask"]))
    assert rel_err(out, arrays["t5gemma.last_hidden_state"]) <= TOL


def test_sliding_window_layers(ref, encoder):
    """A window short enough to bite (the bundled 4096 never does at 32 tokens): |i - j| <= window."""
    meta, arrays = ref
    narrow = T5GemmaEncoder(dataclasses.replace(encoder.config, sliding_window=meta["sliding_window"]))
    narrow.update(encoder.parameters())
    ids, mask = arrays["tokens.input_ids"][:2], arrays["tokens.attention_mask"][:2]
    expected = arrays[f"t5gemma.sliding{meta['sliding_window']}.last_hidden_state"]
    assert rel_err(narrow(mx.array(ids), mx.array(mask)), expected) <= TOL
    # and the window does change the result: the test would catch a missing sliding mask
    assert rel_err(encoder(mx.array(ids), mx.array(mask)), expected) > 1e-3


def test_encoder_only_checkpoint(ref):
    """`T5GemmaEncoderModel.save_pretrained` layout (`encoder.*`) gives the same encoder as the bundled
    enc-dec (`model.encoder.*`)."""
    _, arrays = ref
    tensors = {
        k[len("model.") :]: v
        for k, v in read_tensors(T5DIRS["small"]).items()
        if k.startswith("model.encoder.")
    }
    ckpt = Checkpoint(tensors)
    config = T5GemmaConfig.from_dict(json.loads((T5DIRS["small"] / "config.json").read_text()))
    model = T5GemmaEncoder(config)
    model.load_weights(list(model.sanitize(ckpt, "").items()), strict=True)
    ckpt.finish()
    out = model(mx.array(arrays["tokens.input_ids"]), mx.array(arrays["tokens.attention_mask"]))
    assert rel_err(out, arrays["t5gemma.last_hidden_state"]) <= TOL


@pytest.mark.parametrize("model", ["small", "medium"])
def test_strict_key_accounting(model):
    """Every tensor of the bundled enc-dec is used (encoder) or ignored by name (decoder, LM head)."""
    tensors = read_tensors(T5DIRS[model])
    config = T5GemmaConfig.from_dict(json.loads((T5DIRS[model] / "config.json").read_text()))
    enc = T5GemmaEncoder(config)
    ckpt = Checkpoint(dict(tensors))
    weights = enc.sanitize(ckpt, "")
    ckpt.finish(ignore=t5gemma_ignore_patterns())
    enc.load_weights(list(weights.items()), strict=True)
    assert len(weights) == len([k for k in tensors if k.startswith("model.encoder.")])
    with pytest.raises(UserError, match="does not know: model.decoder"):
        ckpt.finish()  # without the ignore list the decoder is reported
    with pytest.raises(UserError, match="not a T5Gemma checkpoint"):
        enc.sanitize(Checkpoint({"foo.weight": mx.zeros(1)}), "")
    extra = Checkpoint({**tensors, "model.encoder.layers.0.extra": mx.zeros(1)})
    enc.sanitize(extra, "")
    with pytest.raises(UserError, match="layers.0.extra"):
        extra.finish(ignore=t5gemma_ignore_patterns())


# ----------------------------------------------------------------------------------------------- config


def _config() -> dict:
    return json.loads((T5DIRS["small"] / "config.json").read_text())


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda e: e.pop("hidden_size"), "lacks 'hidden_size'"),
        (lambda e: e.update(num_hidden_layers="2"), "'num_hidden_layers' must be int"),
        (lambda e: e.update(rms_norm_eps="1e-6"), "'rms_norm_eps' must be float"),
        (lambda e: e.update(attention_bias=1), "'attention_bias' must be bool"),
        (lambda e: e.update(num_attention_heads=True), "'num_attention_heads' must be int"),
        (lambda e: e.update(layer_types=["full_attention"]), "'layer_types' must list 2"),
        (lambda e: e.update(hidden_activation="relu"), "unsupported T5Gemma hidden_activation"),
        (lambda e: e.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1.0}), "rope_type"),
        (lambda e: e.update(num_key_value_heads=3), "not a multiple"),
    ],
)
def test_bad_config(edit, match):
    cfg = _config()
    edit(cfg["encoder"])
    with pytest.raises(UserError, match=match) as e:
        T5GemmaConfig.from_dict(cfg)
    assert "\n" not in str(e.value)


def test_config_defaults_and_layouts():
    """The `encoder` section or the module config itself; a pre-5 top-level rope_theta; transformers' default
    alternating layer types."""
    cfg = _config()
    full = T5GemmaConfig.from_dict(cfg)
    assert full == T5GemmaConfig.from_dict(cfg["encoder"])
    assert full.layer_types == ("sliding_attention", "full_attention") and full.query_pre_attn_scalar == 32
    old = copy.deepcopy(cfg["encoder"])
    old.pop("layer_types")
    old["rope_theta"] = old.pop("rope_parameters")["rope_theta"]
    assert T5GemmaConfig.from_dict(old) == full
