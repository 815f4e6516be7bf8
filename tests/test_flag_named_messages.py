"""Errors that combine settings name the flag a CLI user typed ("--mask-end (mask_end)"), not only the
Python argument: `settings.named` renders them from the settings schema. End to end through
mlx-audio-generate on the tiny converted checkpoints, and at the Python API for the shared checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlx_audio_generate import registry
from mlx_audio_generate.audio import write_audio
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.convert import convert
from mlx_audio_generate.diffusion.inpaint import check_mask_args
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.musicgen.longform import stride_frames
from mlx_audio_generate.settings import named
from mlx_audio_generate.stable_audio.generate import resolve_init_noise_level

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    t = np.arange(44100) / 44100
    x = 0.2 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)]).astype(np.float32)
    return write_audio(tmp_path_factory.mktemp("clip") / "clip.wav", x, 44100)


def test_named_renders_flags_from_the_schema():
    known = registry.all_settings()
    for name, (st, _) in known.items():
        assert named(name) == f"{st.flag} ({name})"
    assert named("mask_start", "mask_end") == "--mask-start (mask_start) / --mask-end (mask_end)"
    assert named("marination") == "marination"  # a Python-API keyword, no flag: not dressed up as one


def test_stable_audio_messages_name_flags(stable_audio_1_0_converted, clip, tmp_path, capsys):
    big = ["--model", "stable_audio", "--weights-dir", stable_audio_1_0_converted, "--prompt", "x",
           "--seconds", "0.7", "--steps", "1", "--output", tmp_path / "o.wav"]  # fmt: skip
    line = one_line(*run([*big, "--mask-start", "0.2", "--mask-end", "0.5"], capsys))
    assert "--mask-start (mask_start) / --mask-end (mask_end) need --inpaint-audio" in line, line
    assert "marination" not in line and "softness" not in line  # not given, and not flags at all
    line = one_line(*run([*big, "--inpaint-audio", clip, "--mask-start", "0.5", "--mask-end", "0.2"], capsys))
    assert "--mask-end (mask_end) = 0.2 s must be after --mask-start (mask_start) = 0.5 s" in line, line
    line = one_line(*run([*big, "--inpaint-audio", clip, "--mask-start", "0.5"], capsys))
    assert "needs --mask-start (mask_start) and --mask-end (mask_end)" in line, line
    line = one_line(*run([*big, "--init-noise-level", "3"], capsys))
    assert "--init-noise-level (init_noise_level) need --init-audio (init_audio)" in line, line
    args = [*big, "--init-audio", clip, "--init-noise-level", "3", "--init-strength", "0.5"]
    line = one_line(*run(args, capsys))
    assert "give --init-noise-level (init_noise_level) or --init-strength (init_strength), not both" in line
    line = one_line(*run([*big, "--init-audio", clip, "--inpaint-audio", clip], capsys))
    assert "--init-audio (init_audio)" in line and "--inpaint-audio (inpaint_audio)" in line, line
    assert not (tmp_path / "o.wav").exists()


def test_ace_step_messages_name_flags(tmp_path, capsys):
    weights = convert(str(FIXTURES / "ace" / "acestep-v15-turbo"), tmp_path / "turbo")
    base = ["--model", "ace_step", "--weights-dir", weights, "--prompt", "pop", "--seconds", "4",
            "--output", tmp_path / "x.wav"]  # fmt: skip
    line = one_line(*run([*base, "--guidance-scale", "5"], capsys))
    assert "--guidance-scale (guidance_scale) = 5 does not apply to a turbo" in line, line
    line = one_line(*run([*base, "--cfg-interval-start", "0.2"], capsys))
    assert "--cfg-interval-start (cfg_interval_start) / --cfg-interval-end (cfg_interval_end)" in line


def test_shared_checks_name_flags():
    with pytest.raises(UserError, match=r"--mask-start \(mask_start\) must be a number of seconds"):
        check_mask_args(float("nan"), 1.0, 0.0, 0.0, 0.0, 10.0)
    with pytest.raises(UserError, match=r"lies outside") as e:
        check_mask_args(0.0, 20.0, 0.0, 0.0, 0.0, 10.0)
    assert "--mask-end" in str(e.value)
    with pytest.raises(UserError, match=r"^--init-strength \(init_strength\) must be in"):
        resolve_init_noise_level("v", None, 2.0)
    with pytest.raises(UserError, match=r"^--init-audio \(init_audio\) needs --init-noise-level"):
        resolve_init_noise_level("v", None, None)
    with pytest.raises(UserError, match=r"^--extend-stride \(extend_stride\) must be more than 0"):
        stride_frames(0.0, 30.0, 50.0)


def test_stable_audio_3_message_names_flags(tmp_path):
    import mlx_audio_generate as mag

    model = mag.load(str(convert(str(FIXTURES / "sa3" / "small"), tmp_path / "small")))
    with pytest.raises(UserError, match=r"^--init-noise-level \(init_noise_level\) needs --init-audio"):
        model.generate("x", seconds=0.1, init_noise_level=0.5)
    with pytest.raises(UserError, match=r"^--inpaint-regions \(inpaint_regions\) need --inpaint-audio"):
        model.generate("x", seconds=0.1, inpaint_regions="0:0.05")
    clip = np.zeros((2, 4410), np.float32)
    with pytest.raises(UserError, match=r"^--inpaint-regions \(inpaint_regions\): 'a' is not a number"):
        model.generate("x", seconds=0.1, inpaint_audio=clip, inpaint_regions="a:b")
    with pytest.raises(UserError, match=r"^--seconds \(seconds\) = 1e-06 is shorter than one sample"):
        model.generate("x", seconds=1e-6)
