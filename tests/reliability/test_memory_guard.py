"""Requests and checkpoints that would not fit in memory are refused with a one-line UserError before MLX
allocates (MLX aborts or segfaults on a failed allocation). `available_bytes` is patched small where a test
needs a refusal, so no test allocates much."""

from __future__ import annotations

import mlx.core as mx
import pytest

import mlx_audio_generate  # noqa: F401  (loads the BLAS before mlx.core)
from mlx_audio_generate import memory
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.errors import UserError


def one_line(fn, *words):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_check_fits_names_the_setting():
    memory.check_fits(10, "this request", "the batch size", available=100)
    one_line(
        lambda: memory.check_fits(2**40, "this request", "the batch size", available=2**30),
        "lower the batch size",
        "1.0 GiB",
    )


def test_available_bytes_is_this_machines(tmp_path):
    free = memory.available_bytes()
    assert free is not None and 0 < free < 1 << 50
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:   2048 kB\n")
    assert memory._meminfo_available(str(meminfo)) == 2048 * 1024
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("5\n")
    assert memory._cgroup_available(str(tmp_path)) is None  # no limit
    (tmp_path / "memory.max").write_text("1000\n")
    assert memory._cgroup_available(str(tmp_path)) == 995


@pytest.fixture
def small_device(monkeypatch):
    """The device has 64 MiB free, whatever the machine has."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 << 20)


def test_musicgen_batch_refused_before_allocating(musicgen_converted, small_device):
    from mlx_audio_generate.musicgen.generate import MusicGen

    model = MusicGen.from_pretrained(musicgen_converted)
    mx.eval(model.model.parameters())
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    one_line(lambda: model.generate(["x"] * 2000, seconds=30, seed=0), "this request", "lower the batch")
    assert mx.get_peak_memory() - before < 8 << 20  # refused before the text encoder or any cache


def test_musicgen_cli_n_batch_refused(musicgen_converted, small_device, tmp_path, capsys):
    args = ["--model", "musicgen", "--weights-dir", str(musicgen_converted), "--prompt", "x", "--n", "2000"]
    args += ["--batch-size", "2000", "--seconds", "30", "--quiet", "--output", str(tmp_path / "o.wav")]
    with pytest.raises(SystemExit) as e:
        generate_cli.main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--batch-size" in err, err
    assert not list(tmp_path.iterdir())


def test_stable_audio_batch_refused_before_allocating(stable_audio_small_converted, small_device):
    from mlx_audio_generate.stable_audio.generate import StableAudio

    model = StableAudio.from_pretrained(stable_audio_small_converted)
    mx.eval(model.model.parameters())
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    one_line(lambda: model.generate(["x"] * 20000, steps=1, seed=0), "this request", "lower the batch")
    assert mx.get_peak_memory() - before < 8 << 20


def test_requests_that_fit_are_not_refused(musicgen_converted):
    """The estimate of an ordinary request on this machine passes (no false refusals of small work)."""
    from mlx_audio_generate.musicgen.generate import MusicGen

    model = MusicGen.from_pretrained(musicgen_converted)
    audio = model.generate(["a", "b"], seconds=0.3, seed=0)
    assert audio.shape[0] == 2


def test_musicgen_estimate_covers_measured_peak(musicgen_converted):
    """The request estimate is an upper bound of what MLX really allocates (measured), within 50x."""
    from mlx_audio_generate.musicgen import memory as mg_memory
    from mlx_audio_generate.musicgen.generate import MusicGen

    model = MusicGen.from_pretrained(musicgen_converted)
    mx.eval(model.model.parameters())
    rows, seconds = 4, 2.0
    total = round(seconds * model.frame_rate)
    est = mg_memory.request_bytes(
        model.model.lm.config, model.model.audio_encoder.config, model.model.text_encoder.config,
        rows=rows, guided=True, window_frames=total, total_frames=total, text_tokens=8,
    )  # fmt: skip
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    model.generate(["lofi piano"] * rows, seconds=seconds, seed=0)
    peak = mx.get_peak_memory() - before
    assert peak <= est <= 50 * peak, (peak, est)


def test_weights_that_cannot_fit_are_refused(musicgen_converted, monkeypatch):
    from mlx_audio_generate.converted import open_folder
    from mlx_audio_generate.musicgen.full_model import MusicGenModel

    config = open_folder(musicgen_converted).config
    MusicGenModel(config)  # fits
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 10)
    one_line(lambda: MusicGenModel(config), "weights", "quantized")


def test_the_check_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(memory.CHECK_ENV, "0")
    memory.check_fits(2**40, "this request", "the batch size", available=2**30)  # no error
    monkeypatch.setenv(memory.CHECK_ENV, "1")
    one_line(lambda: memory.check_fits(2**40, "this request", "the batch size", available=2**30), "=0")
