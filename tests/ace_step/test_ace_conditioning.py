"""ACE-Step 1.5 conditioning parity (mlx_audio_generate.ace_step.conditioning / condition_blocks /
audio_tokens) with the original `acestep` code on the committed tiny turbo checkpoint (fp32): the handler's
prompt formats and tokens, the lyric and timbre encoders, pack_sequences, prepare_condition's packed condition
and context latents, the audio tokenizer's FSQ codes and the detokenizer's 25 Hz hints.

Every comparison is against reference outputs: the committed tests/fixtures/ace/conditioning (made by
tests/reference/ace_conditioning.py) and, where the reference sources are here, a fresh run of that script.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.ace_step.condition_blocks import AceConditionConfig
from mlx_audio_generate.ace_step.conditioning import (
    AceConditioning,
    LyricEncoder,
    TimbreEncoder,
    format_metas,
    lyric_prompt,
    pack_sequences,
    text_prompt,
    tokenize_prompts,
)
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.text.qwen3 import Qwen3Tokenizer
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import ace, ace_conditioning
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
CASES = list(ace_conditioning.CASES)
DECODER = [r"decoder\..*"]  # the DiT's tensors (ace_step/dit.py)


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    """(meta, arrays) of the committed fixture, or of make() rerun now (needs the reference sources)."""
    live = None if ace.reference_root() is None else ace_conditioning.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "conditioning", live), "conditioning")


def config(variant: str = "turbo") -> dict:
    return json.loads((FIXTURES / f"acestep-v15-{variant}" / "config.json").read_text())


def load(variant: str = "turbo", changes: dict | None = None) -> AceConditioning:
    folder = FIXTURES / f"acestep-v15-{variant}"
    model = AceConditioning(AceConditionConfig.from_dict({**config(variant), **(changes or {})}))
    ckpt = Checkpoint(read_tensors(folder), name=str(folder))
    weights = model.sanitize(ckpt)
    ckpt.finish(ignore=DECODER)
    model.load_weights(list(weights.items()), strict=True)
    return model


@pytest.fixture(scope="module")
def model() -> AceConditioning:
    return load()


@pytest.fixture(scope="module")
def silence() -> mx.array:
    import torch

    latent = torch.load(FIXTURES / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True)
    return mx.array(latent.transpose(1, 2).numpy())  # (1, T, C), as the handler transposes it


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("case", CASES)
def test_prompt_tokens_identical(ref, case):
    """Our prompt formats + tokenizer give the handler's padded token batches bit for bit."""
    meta, arrays = ref
    items = meta["cases"][case]["items"]
    texts = [text_prompt(it["caption"], it["metas"], it["instruction"]) for it in items]
    lyrics = [lyric_prompt(it["lyrics"], it["language"]) for it in items]
    got = tokenize_prompts(Qwen3Tokenizer(FIXTURES / ace_conditioning.TEXT_ENCODER), texts, lyrics)
    for name, value in zip(("text_ids", "text_mask", "lyric_ids", "lyric_mask"), got, strict=True):
        np.testing.assert_array_equal(value, arrays[f"{case}.{name}"], err_msg=name)


def test_prompt_text():
    assert text_prompt("pop", None).startswith(
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\npop\n\n# Metas\n"
    )
    assert text_prompt("x", {}, "Repaint").split("\n")[1] == "Repaint:"
    assert format_metas({"tempo": 90, "key": "D minor", "length": 12.7}) == (
        "- bpm: 90\n- timesignature: N/A\n- keyscale: D minor\n- duration: 12 seconds\n"
    )
    assert format_metas(None) == format_metas(3) == format_metas({})
    assert lyric_prompt("[Verse]", "ja") == "# Languages\nja\n\n# Lyric\n[Verse]<|endoftext|>"


# ------------------------------------------------------------------------------------ condition encoder


@pytest.mark.parametrize("case", CASES)
def test_lyric_encoder(ref, model, case):
    """Padding mask + sliding window (4 here: the pair's padded rows beyond it see no valid key)."""
    _, arrays = ref
    out = model.encoder.lyric_encoder(mx.array(arrays[f"{case}.lyric_embeds"]), arrays[f"{case}.lyric_mask"])
    err = rel_err(out, arrays[f"{case}.lyric_encoded"])
    print(f"{case} lyric encoder rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("case", CASES)
def test_timbre_encoder(ref, model, case):
    _, arrays = ref
    embs, mask = model.encoder.timbre_encoder(
        mx.array(arrays[f"{case}.refer_packed"]), arrays[f"{case}.refer_order"]
    )
    assert rel_err(embs, arrays[f"{case}.timbre_embs"]) <= TOL
    np.testing.assert_array_equal(mask, arrays[f"{case}.timbre_mask"])


@pytest.mark.parametrize("case", CASES)
def test_prepare_condition(ref, model, silence, case):
    """The packed condition (lyrics, timbre, text; valid first), its mask and the context latents (the
    pair's second row is a cover: its source is replaced by the detokenized hints)."""
    _, arrays = ref

    def a(k):
        return arrays[f"{case}.{k}"]

    states, mask, context = model.prepare_condition(
        mx.array(a("text_states")),
        a("text_mask"),
        mx.array(a("lyric_embeds")),
        a("lyric_mask"),
        mx.array(a("refer_packed")),
        a("refer_order"),
        mx.array(a("src_latents")),
        mx.array(a("chunk_masks")),
        a("is_covers"),
        silence,
    )
    err = rel_err(states, a("encoder_states"))
    print(f"{case} encoder_hidden_states rel err {err:.2e}")
    assert err <= TOL
    np.testing.assert_array_equal(mask, a("encoder_mask"))
    assert rel_err(context, a("context_latents")) <= TOL


@pytest.mark.parametrize("case", CASES)
def test_tokenize_detokenize(ref, model, silence, case):
    _, arrays = ref
    quantized, codes = model.tokenize(mx.array(arrays[f"{case}.src_latents"]), silence)
    np.testing.assert_array_equal(np.array(codes), arrays[f"{case}.codes"])
    assert rel_err(quantized, arrays[f"{case}.quantized"]) <= TOL
    assert rel_err(model.detokenize(quantized), arrays[f"{case}.hints"]) <= TOL


def test_fsq_on_random_latents(ref, model, silence):
    """Codes of every level (not silence), the 12 frames padded to 15 with silence, and the LM-codes path
    (indices -> get_output_from_indices -> detokenizer) giving the same hints."""
    _, arrays = ref
    quantized, codes = model.tokenize(mx.array(arrays["fsq.latents"]), silence)
    np.testing.assert_array_equal(np.array(codes), arrays["fsq.codes"])
    assert rel_err(quantized, arrays["fsq.quantized"]) <= TOL
    assert rel_err(model.detokenize(quantized), arrays["fsq.hints"]) <= TOL
    assert rel_err(model.codes_to_hints(mx.array(arrays["fsq.codes"])), arrays["fsq.hints"]) <= TOL
    with pytest.raises(UserError, match="audio codes"):
        model.codes_to_hints(mx.array([[[64000]]]))


def test_xl_timbre_prepends_cls(ref, model):
    """xl_turbo's timbre encoder (the config says XL) on the same weights: the special token comes first."""
    _, arrays = ref
    c = dataclasses.replace(model.config, timbre_cls=True)
    xl = TimbreEncoder(c)
    xl.update(model.encoder.timbre_encoder.parameters())
    embs, _ = xl(mx.array(arrays["pair.refer_packed"]), arrays["pair.refer_order"])
    assert rel_err(embs, arrays["variant.xl_timbre"]) <= TOL
    assert AceConditionConfig.from_dict({**config(), "model_version": "xl_turbo"}).timbre_cls
    assert AceConditionConfig.from_dict({**config(), "encoder_hidden_size": 32}).timbre_cls
    assert not model.config.timbre_cls


def test_no_sliding_window_means_no_mask(ref, model):
    """use_sliding_window false: the reference gives sliding layers no mask at all (padding attended)."""
    _, arrays = ref
    c = AceConditionConfig.from_dict({**config(), "use_sliding_window": False})
    lyric = LyricEncoder(c)
    lyric.update(model.encoder.lyric_encoder.parameters())
    out = lyric(mx.array(arrays["pair.lyric_embeds"]), arrays["pair.lyric_mask"])
    assert rel_err(out, arrays["variant.no_sliding_lyric"]) <= TOL


def test_pack_sequences_stable_valid_first():
    h1 = mx.arange(2 * 3, dtype=mx.float32).reshape(2, 3, 1)
    h2 = 10 + mx.arange(2 * 2, dtype=mx.float32).reshape(2, 2, 1)
    packed, mask = pack_sequences(h1, h2, np.array([[1, 0, 1], [1, 1, 0]]), np.array([[0, 1], [1, 1]]))
    assert np.array(packed)[..., 0].tolist() == [[0, 2, 11, 1, 10], [3, 4, 12, 13, 5]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


def test_null_condition_and_base_checkpoint():
    """Both variants' non-DiT tensors are all accounted for; null_condition_emb is the checkpoint's."""
    for variant in ("turbo", "base"):
        m = load(variant)
        want = np.array(read_tensors(FIXTURES / f"acestep-v15-{variant}")["null_condition_emb"])
        np.testing.assert_array_equal(np.array(m.null_condition_emb), want)


def test_strict_accounting():
    folder = FIXTURES / "acestep-v15-turbo"
    tensors = read_tensors(folder)
    tensors["encoder.lyric_encoder.extra.weight"] = tensors["null_condition_emb"]
    ckpt = Checkpoint(tensors)
    AceConditioning(AceConditionConfig.from_dict(config())).sanitize(ckpt)
    with pytest.raises(UserError, match="extra.weight"):
        ckpt.finish(ignore=DECODER)
    missing = {k: v for k, v in read_tensors(folder).items() if k != "encoder.text_projector.weight"}
    with pytest.raises(UserError, match="text_projector"):
        AceConditioning(AceConditionConfig.from_dict(config())).sanitize(Checkpoint(missing))


def test_bad_configs(model, silence):
    for change, match in (
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"layer_types": ["full_attention"]}, "encoders need"),
        ({"layer_types": ["sliding_attention", "chunked"]}, "layer_types"),
        ({"fsq_input_levels": [8, 1]}, "fsq_input_levels"),
        ({"head_dim": 15}, "even"),
        ({"rope_parameters": {"rope_type": "yarn"}}, "RoPE"),
        ({"pool_window_size": 0}, "positive integer"),
    ):
        with pytest.raises(UserError, match=match):
            AceConditionConfig.from_dict({**config(), **change})
    with pytest.raises(UserError, match="order"):
        model.encoder.timbre_encoder(mx.zeros((2, 4, 8)), np.array([0]))
    with pytest.raises(UserError, match="silence latent"):
        model.tokenize(mx.zeros((1, 7, 8)), silence[:, :2])
    with pytest.raises(UserError, match="cover"):
        from mlx_audio_generate.ace_step.conditioning import context_latents

        context_latents(mx.zeros((1, 5, 8)), mx.ones((1, 5, 8)), np.array([True]), None)
