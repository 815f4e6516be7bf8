"""Parity of mlx_audio_generate.text.t5 with transformers' T5EncoderModel and T5 tokenizer (tiny models)."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from tests.reference import require

torch = require("torch")
transformers = require("transformers")

from mlx_audio_generate.errors import UserError  # noqa: E402
from mlx_audio_generate.text.t5 import (  # noqa: E402
    T5Config,
    T5Encoder,
    load_tokenizer,
    relative_position_bucket,
    t5_ignore_patterns,
)
from mlx_audio_generate.weights import Checkpoint, cast, read_tensors  # noqa: E402
from tests.reference.musicgen import save_tiny_musicgen  # noqa: E402
from tests.reference.stable_audio import save_tiny_t5  # noqa: E402

PROMPTS = [
    "happy rock song",
    "lofi piano with warm vinyl crackle, and some unknown Wörds!",
    "",
    "  spaced   out  ",
    "dark techno beat 128 bpm </s> with heavy bass",
]


def rel_err(ours: mx.array, ref: torch.Tensor) -> float:
    ref = ref.detach().float().numpy()
    return float(np.max(np.abs(np.array(ours.astype(mx.float32)) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    return {"musicgen": save_tiny_musicgen(root / "musicgen"), "t5": save_tiny_t5(root / "t5")}


def t5_config_dict(folders, style: str) -> dict:
    config = json.loads((folders[style] / "config.json").read_text())
    return config["text_encoder"] if style == "musicgen" else config


def reference_encoder(folders, style: str, attn: str = "eager", dtype=torch.float32):
    if style == "musicgen":
        # EnCodec has no sdpa path: load with the default, then switch the T5 alone.
        model = transformers.MusicgenForConditionalGeneration.from_pretrained(folders[style]).text_encoder
        model.set_attn_implementation(attn)
    else:
        model = transformers.T5EncoderModel.from_pretrained(
            folders[style], attn_implementation=attn, dtype=dtype
        )
    return model.eval()


def convert(folders, style: str) -> T5Encoder:
    prefix = "text_encoder." if style == "musicgen" else ""
    tensors = read_tensors(folders[style])
    if style == "musicgen":  # the MusicGen converter owns the other tensors; keep the T5 ones only
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    ckpt = Checkpoint(tensors)
    model = T5Encoder(T5Config.from_dict(t5_config_dict(folders, style)))
    weights = model.sanitize(ckpt, prefix)
    ckpt.finish(ignore=t5_ignore_patterns(prefix))
    model.load_weights(list(weights.items()), strict=True)
    return model


# (a) tokenizer


@pytest.mark.parametrize("max_length,pad_to_max", [(None, False), (5, True), (8, False), (40, True)])
def test_tokenizer_matches_transformers(folders, max_length, pad_to_max):
    ref_tok = transformers.AutoTokenizer.from_pretrained(folders["t5"])
    kwargs: dict = {"padding": "max_length" if pad_to_max else True}
    if max_length is not None:
        kwargs.update(truncation=True, max_length=max_length)
    ref = ref_tok(PROMPTS, **kwargs)
    ids, mask = load_tokenizer(folders["t5"]).encode(
        PROMPTS, max_length=max_length, pad_to_max_length=pad_to_max
    )
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"]))
    if max_length is not None and max_length < ids.shape[1] + 1:
        assert (ids[:, -1][mask[:, -1] == 1] == 1).all()  # truncation keeps the trailing </s>


def test_tokenizer_older_tokenizer_json(folders, tmp_path):
    """A pre-v5 style tokenizer.json (bare Metaspace, no template) still tokenizes as transformers does."""
    folder = tmp_path / "old"
    shutil.copytree(folders["t5"], folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "▁",
        "prepend_scheme": "always",
        "split": True,
    }
    spec["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    ref = transformers.AutoTokenizer.from_pretrained(folder)(PROMPTS, padding=True)
    ids, mask = load_tokenizer(folder).encode(PROMPTS)
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"]))


def test_tokenizer_missing(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


# (b) hidden states


@pytest.mark.parametrize("style", ["musicgen", "t5"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_encoder_matches_transformers(folders, style, attn):
    ids, mask = load_tokenizer(folders[style]).encode(PROMPTS)
    assert mask.sum(1).min() < mask.shape[1]  # a padded batch
    ours = convert(folders, style)(mx.array(ids), mx.array(mask))
    with torch.no_grad():
        ref = reference_encoder(folders, style, attn)(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).last_hidden_state
    assert ours.shape == tuple(ref.shape)
    assert rel_err(ours, ref) <= 1e-4
    # Without a mask: every token attends everywhere.
    with torch.no_grad():
        ref = reference_encoder(folders, style, attn)(
            input_ids=torch.from_numpy(ids).long()
        ).last_hidden_state
    assert rel_err(convert(folders, style)(mx.array(ids)), ref) <= 1e-4


def test_config_from_dict(folders):
    d = t5_config_dict(folders, "t5")
    c = T5Config.from_dict(d)
    assert (c.d_model, c.num_layers, c.dense_act_fn, c.is_gated_act) == (32, 2, "relu", False)
    g = T5Config.from_dict({**d, "feed_forward_proj": "gated-gelu"})
    assert (g.dense_act_fn, g.is_gated_act) == ("gelu_new", True)
    with pytest.raises(UserError, match="feed_forward_proj"):
        T5Config.from_dict({**d, "feed_forward_proj": "gated-bogus"})


def test_gated_gelu_matches_transformers():
    """T5 v1.1 / flan style FF (wi_0, wi_1, gelu_new), built in memory."""
    cfg = transformers.T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"
    )
    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(cfg).eval()
    ckpt = Checkpoint({k: mx.array(v.numpy()) for k, v in ref.state_dict().items()})
    ours = T5Encoder(T5Config.from_dict(cfg.to_dict()))
    ours.load_weights(list(ours.sanitize(ckpt, "").items()), strict=True)
    ckpt.finish()
    ids = np.random.default_rng(0).integers(0, 50, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    with torch.no_grad():
        r = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    assert rel_err(ours(mx.array(ids), mx.array(mask)), r) <= 1e-4


# (c) strict key accounting


def test_missing_tensor_is_named(folders):
    tensors = read_tensors(folders["t5"])
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    del tensors[key]
    model = T5Encoder(T5Config.from_dict(t5_config_dict(folders, "t5")))
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        model.sanitize(Checkpoint(tensors), "")


def test_missing_embedding_is_named(folders):
    tensors = {k: v for k, v in read_tensors(folders["musicgen"]).items() if not k.endswith("shared.weight")}
    model = T5Encoder(T5Config.from_dict(t5_config_dict(folders, "musicgen")))
    with pytest.raises(UserError, match=r"text_encoder\.shared\.weight"):
        model.sanitize(Checkpoint(tensors), "text_encoder.")


def test_extra_tensor_is_named(folders):
    tensors = read_tensors(folders["t5"])
    extra = "encoder.block.0.layer.0.SelfAttention.extra.weight"
    tensors[extra] = mx.zeros((2,))
    ckpt = Checkpoint(tensors)
    T5Encoder(T5Config.from_dict(t5_config_dict(folders, "t5"))).sanitize(ckpt, "")
    with pytest.raises(UserError, match=extra.replace(".", r"\.")):
        ckpt.finish(ignore=t5_ignore_patterns(""))


def test_tied_embedding_both_copies_used(folders):
    """Older full-T5 files save `shared`, `encoder.embed_tokens` and `lm_head`: all accounted for."""
    tensors = read_tensors(folders["t5"])
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
    tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"]
    tensors["lm_head.weight"] = tensors["shared.weight"]
    ckpt = Checkpoint(tensors)
    T5Encoder(T5Config.from_dict(t5_config_dict(folders, "t5"))).sanitize(ckpt, "")
    ckpt.finish(ignore=t5_ignore_patterns(""))
    with pytest.raises(UserError, match="decoder"):
        ckpt.finish()  # the decoder really is there and only the ignore list lets it pass


# (d) relative position buckets


@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (32, 64), (64, 256), (16, 20)])
def test_relative_position_bucket(buckets, max_distance):
    rel = torch.arange(-700, 700)
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        rel, bidirectional=True, num_buckets=buckets, max_distance=max_distance
    )
    np.testing.assert_array_equal(relative_position_bucket(rel.numpy(), buckets, max_distance), ref.numpy())


# (e) float16


def test_float16_finite_and_close(folders):
    """fp16 vs fp32: loose tolerance (2e-2 relative), since every matmul rounds to 11 mantissa bits."""
    ids, mask = load_tokenizer(folders["t5"]).encode(PROMPTS)
    model = convert(folders, "t5")
    ref32 = model(mx.array(ids), mx.array(mask))
    model.load_weights(list(cast(dict(_flat(model)), "float16").items()))
    out16 = model(mx.array(ids), mx.array(mask))
    assert out16.dtype == mx.float16
    assert bool(mx.all(mx.isfinite(out16)))
    ref = torch.from_numpy(np.array(ref32))
    assert rel_err(out16, ref) <= 2e-2


def test_float16_clamp_matches_transformers(folders):
    """FF weights x30000 overflow fp16 to inf: transformers clamps instead, and so do we (5e-3 relative)."""
    ids, mask = load_tokenizer(folders["t5"]).encode(PROMPTS[:2])
    ref = reference_encoder(folders, "t5", dtype=torch.float16)
    ref.to(torch.float16)  # all weights half, as stable-audio-tools runs t5-base
    ff = ref.encoder.block[0].layer[1].DenseReluDense
    with torch.no_grad():
        ff.wo.weight.mul_(30000.0)
    seen = []
    ff.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isinf(o).any())))
    with torch.no_grad():
        r = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    assert seen == [True]  # the test really overflows
    model = convert(folders, "t5")
    weights = cast(dict(_flat(model)), "float16")
    weights["blocks.0.ff.wo.weight"] = weights["blocks.0.ff.wo.weight"] * 30000.0
    model.load_weights(list(weights.items()))
    out = model(mx.array(ids), mx.array(mask))
    assert torch.isfinite(r.last_hidden_state).all() and bool(mx.all(mx.isfinite(out)))
    assert rel_err(out, r.last_hidden_state) <= 5e-3


def test_float16_with_fp32_wo_matches_transformers(folders):
    """from_pretrained(dtype=float16) keeps `wo` in fp32 (`_keep_in_fp32_modules`); we get the same dtypes.

    Loose tolerance (5e-3 relative): torch and MLX round half-precision matmuls differently.
    """
    ids, mask = load_tokenizer(folders["t5"]).encode(PROMPTS)
    ref = reference_encoder(folders, "t5", dtype=torch.float16)
    assert ref.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    with torch.no_grad():
        r = ref(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    model = convert(folders, "t5")
    w32 = dict(_flat(model))
    weights = {k: w32[k] if k.endswith("ff.wo.weight") else v for k, v in cast(w32, "float16").items()}
    model.load_weights(list(weights.items()))
    out = model(mx.array(ids), mx.array(mask))
    assert out.dtype == mx.float16 and r.last_hidden_state.dtype == torch.float16
    assert rel_err(out, r.last_hidden_state) <= 5e-3


def _flat(model: T5Encoder):
    from mlx.utils import tree_flatten

    return tree_flatten(model.parameters())
