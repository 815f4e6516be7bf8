"""`mlx-audio-generate --model stable_audio_3 --weights-dir ...` end to end on the converted tiny small
checkpoint: files (length, channels, rate), determinism and equality with the Python API, every Stable
Audio 3 flag, a batch file, and bad input (one-line error, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mlx_audio_generate as mag
from mlx_audio_generate.cli import batch as batch_cli
from mlx_audio_generate.cli import convert as convert_cli
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.convert import convert

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
SR = 44100


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return convert(str(FIXTURES / "small"), tmp_path_factory.mktemp("sa3-cli") / "small")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    t = np.arange(int(0.15 * SR)) / SR
    audio = 0.4 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)
    path = tmp_path_factory.mktemp("sa3-audio") / "clip.wav"
    sf.write(path, audio.astype(np.float32), SR, subtype="FLOAT")
    return path


def run(main, args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def gen(weights, out: Path, capsys, *extra, seconds: str = "0.1") -> np.ndarray:
    args = ["--model", "stable_audio_3", "--weights-dir", weights, "--prompt", "lofi house loop",
            "--seconds", seconds, "--seed", "7", "--output", out, "--quiet", *extra]  # fmt: skip
    code, err = run(generate_cli.main, args, capsys)
    assert code == 0, err
    audio, sr = sf.read(out, dtype="float32", always_2d=True)
    assert sr == SR
    return audio.T


def assert_one_line_error(code: int, err: str, expect: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect.lower() in lines[0].lower(), lines[0]


def test_generate_file_and_determinism(weights, tmp_path, capsys):
    a = gen(weights, tmp_path / "a.wav", capsys)
    assert a.shape == (2, round(0.1 * SR))
    assert np.array_equal(a, gen(weights, tmp_path / "b.wav", capsys))
    api = mag.load(str(weights)).generate(["lofi house loop"], seconds=0.1, seed=[7])[0]
    assert np.allclose(a, api, atol=1e-6)  # the CLI is the Python API with the same seed (a list of one)


FLAGS = [
    ("--steps", "3"),
    ("--cfg-scale", "3"),
    ("--sampler", "euler"),
    ("--cfg-scale", "3", "--apg-scale", "0"),
    ("--cfg-scale", "3", "--negative-prompt", "punchy kick"),
]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: " ".join(f))
def test_each_flag_acts_as_the_api(weights, tmp_path, capsys, flags):
    base = gen(weights, tmp_path / "base.wav", capsys, "--cfg-scale", "3") if "--apg-scale" in flags else None
    out = gen(weights, tmp_path / "out.wav", capsys, *flags)
    kw = {f[2:].replace("-", "_"): v for f, v in zip(flags[::2], flags[1::2], strict=True)}
    kw = {k: (v if k in ("sampler", "negative_prompt") else float(v)) for k, v in kw.items()}
    if "steps" in kw:
        kw["steps"] = int(kw["steps"])
    api = mag.load(str(weights)).generate(["lofi house loop"], seconds=0.1, seed=[7], **kw)[0]
    assert np.allclose(out, api, atol=1e-6)
    plain = mag.load(str(weights)).generate(["lofi house loop"], seconds=0.1, seed=[7])[0]
    assert not np.allclose(api, plain, atol=1e-6)  # the flag changed the generation
    if base is not None:
        assert not np.array_equal(out, base)


def test_audio_flags(weights, clip, tmp_path, capsys):
    model = mag.load(str(weights))
    a2a = gen(weights, tmp_path / "v.wav", capsys, "--init-audio", clip, "--init-noise-level", "0.6")
    api = model.generate(
        ["lofi house loop"], seconds=0.1, seed=[7], init_audio=str(clip), init_noise_level=0.6
    )
    assert np.allclose(a2a, api[0], atol=1e-6)
    regions = "0.02:0.05,0.12:"
    inp = gen(weights, tmp_path / "i.wav", capsys, "--inpaint-audio", clip, "--inpaint-regions", regions,
              seconds="0.18")  # fmt: skip
    api = model.generate(["lofi house loop"], seconds=0.18, seed=[7], inpaint_audio=str(clip),
                         inpaint_regions=[(0.02, 0.05), (0.12, None)])  # fmt: skip
    assert inp.shape == (2, round(0.18 * SR)) and np.allclose(inp, api[0], atol=1e-6)


def test_batch_file(weights, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"prompt": "lofi house loop", "seconds": 0.1, "seed": 7},
             {"prompt": "footsteps", "seconds": 0.05, "steps": 3, "cfg_scale": 2.0, "sampler": "euler",
              "negative_prompt": "kick", "apg_scale": 0.5, "id": "steps"}]  # fmt: skip
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    code, err = run(batch_cli.main, ["--weights-dir", weights, "--prompts-file", jobs, "--output-dir", out,
                                     "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    first, sr = sf.read(out / rows[0]["file"], dtype="float32", always_2d=True)
    assert sr == SR and first.shape == (round(0.1 * SR), 2)
    api = mag.load(str(weights)).generate(["lofi house loop"], seconds=0.1, seed=[7])[0]
    assert np.allclose(first.T, api, atol=1e-6)
    second, _ = sf.read(out / rows[1]["file"], dtype="float32", always_2d=True)
    assert second.shape == (round(0.05 * SR), 2)


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--seconds", "1.0"], "at most"),
        (["--sampler", "heun"], "sampler"),
        (["--apg-scale", "3"], "apg"),
        (["--inpaint-audio", "CLIP", "--inpaint-regions", "0.05:0.5"], "outside the clip"),
        (["--inpaint-audio", "CLIP"], "inpaint_regions"),
        (["--init-audio", "missing.wav"], "does not exist"),
        (["--mask-start", "0.1"], "stable audio options"),
    ],
)
def test_bad_input(weights, clip, tmp_path, capsys, extra, expect):
    extra = [str(clip) if x == "CLIP" else x for x in extra]
    out = tmp_path / "x.wav"
    args = ["--model", "stable_audio_3", "--weights-dir", weights, "--prompt", "lofi", "--seconds", "0.1",
            "--output", out, "--quiet", *extra]  # fmt: skip
    if "--seconds" in extra:
        args[args.index("--seconds") + 1] = extra[extra.index("--seconds") + 1]
    code, err = run(generate_cli.main, args, capsys)
    assert_one_line_error(code, err, expect)
    assert not out.exists()


def test_convert_cli_missing_t5gemma(tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "small", src)
    shutil.rmtree(src / "t5gemma-b-b-ul2")
    code, err = run(convert_cli.main, ["--model", src, "--output", tmp_path / "m"], capsys)
    assert_one_line_error(code, err, "T5Gemma")
    assert not (tmp_path / "m").exists()
