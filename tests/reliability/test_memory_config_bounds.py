"""Every config field that sizes a tensor is bounded before a model is built from it: absurd values (a
corrupt or hostile config.json) give a one-line UserError naming the field; every released checkpoint's
values pass."""

from __future__ import annotations

import json
import shutil

import pytest

import mlx_audio_generate  # noqa: F401
from mlx_audio_generate.codecs.encodec import EncodecConfig
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.model import DecoderConfig
from mlx_audio_generate.text.t5 import T5Config


def one_line(fn, *words):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_released_checkpoint_sizes_pass():
    large = dict(
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        ffn_dim=8192,
        num_codebooks=8,
        vocab_size=2048,
        audio_channels=2,
        max_position_embeddings=2048,
    )
    assert DecoderConfig.from_dict(large).num_hidden_layers == 48
    xxl = dict(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
    )
    assert T5Config.from_dict(xxl).d_model == 4096
    codec = EncodecConfig.from_dict(
        dict(
            sampling_rate=32000,
            num_filters=64,
            upsampling_ratios=[8, 5, 4, 4],
            codebook_size=2048,
            target_bandwidths=[2.2],
            hidden_size=128,
        )
    )
    assert codec.hop_length == 640


def _edit(src, dst, edit):
    shutil.copytree(src, dst)
    path = dst / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("decoder", "num_hidden_layers", 10**6),
        ("decoder", "hidden_size", 10**9),
        ("decoder", "vocab_size", 10**8),
        ("decoder", "num_codebooks", 10**4),
        ("decoder", "max_position_embeddings", 10**9),
        ("text_encoder", "num_layers", 10**6),
        ("text_encoder", "d_model", 10**7),
        ("audio_encoder", "num_filters", 10**6),
        ("audio_encoder", "upsampling_ratios", [8, 5, 4, 10**6]),
    ],
)
def test_musicgen_absurd_config_refused(musicgen_converted, tmp_path, section, key, value):
    from mlx_audio_generate.musicgen.generate import MusicGen

    folder = _edit(musicgen_converted, tmp_path / "bad", lambda c: c[section].__setitem__(key, value))
    one_line(lambda: MusicGen.from_pretrained(folder), key, "out of range")


def test_musicgen_weights_too_big_for_memory(musicgen_converted, tmp_path):
    """Every field within its bound, but together they describe ~1e12 parameters: refused, not built."""
    from mlx_audio_generate.musicgen.generate import MusicGen

    def edit(c):
        c["decoder"].update(hidden_size=16384, num_hidden_layers=512, num_attention_heads=128, ffn_dim=65536)

    folder = _edit(musicgen_converted, tmp_path / "big", edit)
    one_line(lambda: MusicGen.from_pretrained(folder), "weights")


@pytest.mark.parametrize(
    "path, value",
    [
        (("sample_size",), 10**11),
        (("model", "diffusion", "config", "depth"), 10**6),
        (("model", "diffusion", "config", "embed_dim"), 10**8),
        (("model", "pretransform", "config", "decoder", "config", "channels"), 10**7),
        (("model", "pretransform", "config", "encoder", "config", "strides"), [2, 10**6]),
        (("model", "conditioning", "cond_dim"), 10**8),
    ],
)
def test_stable_audio_absurd_config_refused(stable_audio_small_converted, tmp_path, path, value):
    from mlx_audio_generate.stable_audio.generate import StableAudio

    def edit(c):
        d = c["model_config"]
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    folder = _edit(stable_audio_small_converted, tmp_path / "bad", edit)
    one_line(lambda: StableAudio.from_pretrained(folder), path[-1])


def test_stable_audio_1_0_window_passes():
    from mlx_audio_generate.memory import check_bounds
    from mlx_audio_generate.stable_audio.full_model import MODEL_BOUNDS

    check_bounds({"sample_size": 2097152, "sample_rate": 44100}, MODEL_BOUNDS, "Stable Audio")
