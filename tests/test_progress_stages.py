"""Stage-aware progress (issue #5): the API's `on_stage` callback, the CLI's per-stage bars and the conversion
bar, each silent when asked to be."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mlx_audio_generate.cli import convert as convert_cli
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.musicgen.generate import MusicGen
from mlx_audio_generate.stable_audio.generate import StableAudio


def check_stages(events: list[tuple[str, int, int]], stages: list[str]) -> dict[str, list[int]]:
    """Each stage once, in this order, each from 0 to its total by increasing `done`; returns the dones."""
    order = [s for i, (s, _, _) in enumerate(events) if i == 0 or events[i - 1][0] != s]
    assert order == stages, events
    dones = {}
    for stage in stages:
        seen = [(d, t) for s, d, t in events if s == stage]
        (total,) = {t for _, t in seen}
        done = [d for d, _ in seen]
        assert done[0] == 0 and done[-1] == total >= 1, (stage, seen)
        assert all(b > a for a, b in zip(done, done[1:], strict=False)), (stage, seen)
        dones[stage] = done
    return dones


@pytest.fixture(scope="module")
def musicgen(musicgen_converted):
    return MusicGen.from_pretrained(musicgen_converted)


def test_musicgen_stages_and_unchanged_audio(musicgen):
    events, steps = [], []
    kw = dict(seconds=0.3, seed=3, top_k=5)
    audio = musicgen.generate(
        ["lofi", "rain"],
        **kw,
        progress=lambda d, t: steps.append((d, t)),
        on_stage=lambda *e: events.append(e),
    )
    dones = check_stages(events, ["text", "generate", "decode"])
    layers = len(musicgen.model.audio_encoder.decoder.layers)
    assert dones["text"] == [0, 1] and dones["decode"] == list(range(layers + 1))  # mono: each decoder layer
    # the per-step callback is unchanged (the server's progress), and mirrored by the "generate" stage
    assert steps == [(d, steps[-1][1]) for d in dones["generate"][1:]] and steps[-1][0] == steps[-1][1]
    assert np.array_equal(audio, musicgen.generate(["lofi", "rain"], **kw))


def test_musicgen_stereo_decodes_one_chunk_per_channel_and_layer(musicgen_stereo_converted):
    model = MusicGen.from_pretrained(musicgen_stereo_converted)
    events = []
    audio = model.generate("jazz", seconds=0.2, seed=1, on_stage=lambda *e: events.append(e))
    layers = len(model.model.audio_encoder.decoder.layers)
    assert check_stages(events, ["text", "generate", "decode"])["decode"] == list(range(2 * layers + 1))
    assert np.array_equal(audio, model.generate("jazz", seconds=0.2, seed=1))


def test_musicgen_long_form_counts_every_window(musicgen):
    events, steps = [], []
    kw = dict(seconds=0.5, seed=2, top_k=5, window_seconds=0.3, extend_stride=0.2)
    audio = musicgen.generate(
        "lofi", **kw, progress=lambda d, t: steps.append(d), on_stage=lambda *e: events.append(e)
    )
    gen = check_stages(events, ["text", "generate", "decode"])["generate"]
    assert gen == list(range(gen[-1] + 1)) and steps == gen[1:]  # one report per step, over both windows
    assert np.array_equal(audio, musicgen.generate("lofi", **kw))


def test_musicgen_stream_reports_samples_decoded(musicgen):
    events = []
    chunks = list(
        musicgen.generate("lofi", seconds=0.4, seed=1, stream=True, on_stage=lambda *e: events.append(e))
    )
    assert [s for s, _, _ in events[:2]] == ["text", "text"]
    for stage in ("generate", "decode"):
        done = [d for s, d, _ in events if s == stage]
        (total,) = {t for s, _, t in events if s == stage}
        assert done[0] == 0 and done[-1] == total and done == sorted(set(done))
    assert [d for s, d, _ in events if s == "decode"][1:] == list(np.cumsum([c.shape[-1] for c in chunks]))


@pytest.mark.parametrize("fixture", ["stable_audio_small_converted", "stable_audio_1_0_converted"])
def test_stable_audio_stages_and_unchanged_audio(request, fixture):
    model = StableAudio.from_pretrained(request.getfixturevalue(fixture))
    events, steps = [], []
    kw = dict(seconds=0.3, steps=3, seed=4)
    if fixture.endswith("1_0_converted"):
        kw["negative_prompt"] = "noise"
    audio = model.generate(
        "drums", **kw, progress=lambda d, t: steps.append((d, t)), on_stage=lambda *e: events.append(e)
    )
    dones = check_stages(events, ["text", "generate", "decode"])
    assert dones["text"] == [0, 1] and dones["generate"] == [0, 1, 2, 3] and dones["decode"] == [0, 1]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert np.array_equal(audio, model.generate("drums", **kw))


# ----------------------------------------------------------------------------------------------------- CLI


def open_folder_model(weights) -> MusicGen:
    return MusicGen.from_pretrained(weights)


def run(main, args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize(
    "fixture,family,bar",
    [
        ("musicgen_stereo_converted", "musicgen", "generating"),
        ("stable_audio_small_converted", "stable_audio", "denoising"),
    ],
)
def test_cli_shows_a_bar_per_stage_and_none_when_quiet(request, tmp_path, capsys, fixture, family, bar):
    weights = request.getfixturevalue(fixture)
    args = [
        "--model",
        family,
        "--weights-dir",
        str(weights),
        "--prompt",
        "lofi",
        "--seconds",
        "0.2",
        "--seed",
        "1",
    ]
    code, _, err = run(generate_cli.main, [*args, "--output", str(tmp_path / "a.wav")], capsys)
    assert code == 0, err
    # tqdm's own rendering, "<label>: 100%|███| n/n [00:00<00:00, 9.1unit/s]": both bars shown complete
    # (refreshed before closing)
    # stereo MusicGen: each EnCodec decoder layer of each channel; Stable Audio's VAE: one piece
    n = 2 * len(open_folder_model(weights).model.audio_encoder.decoder.layers) if family == "musicgen" else 1
    assert re.search(rf"{bar}: 100%\|[^|]*\| (\d+)/\1 \[[^\]]*step[^\]]*\]", err), err
    assert re.search(rf"decoding: 100%\|[^|]*\| {n}/{n} \[[^\]]*chunk[^\]]*\]", err), err
    assert err.index(f"{bar}: ") < err.index("decoding: ")
    code, out, err = run(generate_cli.main, [*args, "--output", str(tmp_path / "b.wav"), "--quiet"], capsys)
    assert code == 0 and err == "" and out == ""


def test_conversion_bar_and_quiet(musicgen_dir, tmp_path, capsys):
    from mlx_audio_generate.convert import convert

    convert(str(musicgen_dir), tmp_path / "a", quiet=False)
    err = capsys.readouterr().err
    assert "converting " in err and "100%" in err and "tensor" in err
    convert(str(musicgen_dir), tmp_path / "b")  # library default: quiet
    assert capsys.readouterr().err == ""

    code, out, err = run(
        convert_cli.main, ["--model", str(musicgen_dir), "--output", str(tmp_path / "c")], capsys
    )
    assert code == 0 and "converting " in err and "tensor" in err and "converted" in out
    code, out, err = run(
        convert_cli.main, ["--model", str(musicgen_dir), "--output", str(tmp_path / "d"), "--quiet"], capsys
    )
    assert code == 0 and err == "" and out == ""
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


def test_auto_convert_on_first_use_shows_the_bar_unless_quiet(musicgen_dir, tmp_path, monkeypatch, capsys):
    from mlx_audio_generate.resolve import resolve

    monkeypatch.setenv("MLX_AUDIO_GENERATE_CACHE", str(tmp_path / "cache"))
    resolve(str(musicgen_dir), dtype="float32")
    err = capsys.readouterr().err
    assert "converting " in err and "tensor" in err
    resolve(str(musicgen_dir), dtype="float16", quiet=True)
    assert capsys.readouterr().err == ""
