"""Qwen3 text encoder + tokenizer parity (mlx_audio_generate.text.qwen3, on mlx-lm's Qwen3) with transformers
5.x as ACE-Step 1.5's handler runs them (AutoTokenizer one prompt at a time, Qwen3Model called without an
attention mask, embed_tokens for the lyrics), on the committed tiny Qwen3-Embedding stand-in (fp32).

Every comparison is against reference outputs: the committed tests/fixtures/ace/conditioning (made by
tests/reference/ace_conditioning.py) and, where the reference sources are here, a fresh run of that script.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_audio_generate.errors import UserError
from mlx_audio_generate.text.qwen3 import (
    Qwen3TextEncoder,
    Qwen3Tokenizer,
    load_qwen3_args,
    load_qwen3_encoder,
    qwen3_args,
    qwen3_ignore_patterns,
)
from mlx_audio_generate.weights import Checkpoint, read_tensors
from tests.reference import ace, ace_conditioning
from tests.reference.parity import SOURCES, meta_and_arrays, reference_outputs, rel_err

TOL = 1e-4
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ace"
TE = FIXTURES / "Qwen3-Embedding-0.6B"
CASES = list(ace_conditioning.CASES)


@pytest.fixture(scope="module", params=SOURCES)
def ref(request):
    """(meta, arrays) of the committed fixture, or of make() rerun now (needs the reference sources)."""
    live = None if ace.reference_root() is None else ace_conditioning.live
    return meta_and_arrays(reference_outputs(request.param, FIXTURES / "conditioning", live), "conditioning")


@pytest.fixture(scope="module")
def encoder() -> Qwen3TextEncoder:
    return load_qwen3_encoder(TE)


# -------------------------------------------------------------------------------------------- tokenizer


def test_token_texts(ref):
    """Special tokens inside the text stay one token, NFC, the split regex, no template around the text."""
    meta, arrays = ref
    tok = Qwen3Tokenizer(TE)
    for i, text in enumerate(meta["token_texts"]):
        assert tok.encode(text) == arrays[f"tokens.{i}"].tolist(), repr(text)
    assert tok.encode("<|endoftext|>") == [tok.pad_id] and tok.pad_id == meta["pad_id"]


def test_truncation(ref):
    """The handler's max_length 256 (text) / 2048 (lyrics): the end is cut, nothing is added."""
    meta, arrays = ref
    from mlx_audio_generate.ace_step.conditioning import lyric_prompt, text_prompt, tokenize_prompts

    for name, item in meta["truncation"].items():
        ids, mask, lids, lmask = tokenize_prompts(
            Qwen3Tokenizer(TE),
            [text_prompt(item["caption"])],
            [lyric_prompt(item["lyrics"], item["language"])],
        )
        np.testing.assert_array_equal(ids, arrays[f"trunc.{name}.text_ids"])
        np.testing.assert_array_equal(lids, arrays[f"trunc.{name}.lyric_ids"])
        assert mask.all() and lmask.all()


def test_batch_pads_right_after_tokenizing_each(ref):
    meta, arrays = ref
    tok = Qwen3Tokenizer(TE)
    ids, mask = tok.batch(["upbeat pop", "a much longer prompt with more words"], 256)
    short = tok.encode("upbeat pop")
    assert ids[0, : len(short)].tolist() == short and (ids[0, len(short) :] == meta["pad_id"]).all()
    assert mask[0].sum() == len(short) and mask[1].all()


def test_tokenizer_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        Qwen3Tokenizer(tmp_path)
    shutil.copy(TE / "tokenizer.json", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(UserError, match="unsupported tokenizer_class"):
        Qwen3Tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|nope|>"}))
    with pytest.raises(UserError, match="pad token"):
        Qwen3Tokenizer(tmp_path)
    tok = Qwen3Tokenizer(TE)
    for bad in (0, -3, "32", True):
        with pytest.raises(UserError, match="max_length"):
            tok.encode("x", bad)
    with pytest.raises(UserError, match="strings"):
        tok.batch([3], 8)


# ---------------------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("case", CASES)
def test_last_hidden_state(ref, encoder, case):
    """Qwen3Model without attention mask: causal, the pad tokens of the shorter row included."""
    _, arrays = ref
    out = encoder(mx.array(arrays[f"{case}.text_ids"]))
    err = rel_err(out, arrays[f"{case}.text_states"])
    print(f"{case} last_hidden_state rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("case", CASES)
def test_token_embeddings(ref, encoder, case):
    _, arrays = ref
    out = encoder.embed(mx.array(arrays[f"{case}.lyric_ids"]))
    np.testing.assert_array_equal(np.array(out), arrays[f"{case}.lyric_embeds"])


def test_causal_lm_checkpoint_layout(encoder):
    """A `*ForCausalLM` checkpoint (model.* + lm_head) gives the same weights; the head is ignored."""
    tensors = {f"model.{k}": v for k, v in read_tensors(TE).items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    ckpt = Checkpoint(tensors)
    weights = encoder.sanitize(ckpt)
    with pytest.raises(UserError, match="lm_head"):
        ckpt.finish()
    ckpt.finish(ignore=qwen3_ignore_patterns())
    plain = dict(encoder.parameters()["embed_tokens"].items())
    np.testing.assert_array_equal(np.array(weights["embed_tokens.weight"]), np.array(plain["weight"]))


def test_strict_accounting():
    tensors = read_tensors(TE)
    tensors["layers.0.self_attn.q_proj.bias"] = tensors["norm.weight"]
    ckpt = Checkpoint(tensors)
    Qwen3TextEncoder(load_qwen3_args(TE)).sanitize(ckpt)
    with pytest.raises(UserError, match="q_proj.bias"):
        ckpt.finish(ignore=qwen3_ignore_patterns())


def test_bad_configs():
    base = json.loads((TE / "config.json").read_text())
    for change, match in (
        ({"attention_bias": True}, "attention_bias"),
        ({"use_sliding_window": True}, "sliding"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, "sliding"),
        ({"num_key_value_heads": 3}, "multiple"),
        ({"hidden_size": "32"}, "positive integer"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}, "rope_type"),
    ):
        with pytest.raises(UserError, match=match):
            qwen3_args({**base, **change})
    with pytest.raises(UserError, match="lacks"):
        qwen3_args({"hidden_size": 8})
