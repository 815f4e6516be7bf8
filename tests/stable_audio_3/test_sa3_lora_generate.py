"""LoRA through generation: `generate(lora=...)` and `mlx-audio-generate --lora` apply the adapters for that
call exactly as applying them by hand (lora.apply_loras, parity-tested against the reference in
test_sa3_lora.py), change the result, and leave the model as it was; a bad adapter is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mlx_audio_generate as mag
from mlx_audio_generate.cli import generate as generate_cli
from mlx_audio_generate.convert import convert
from mlx_audio_generate.errors import UserError
from mlx_audio_generate.stable_audio_3.lora import apply_loras, parse_loras

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sa3"
ADAPTER = FIXTURES / "lora" / "small" / "lora_all.safetensors"
STACK = [FIXTURES / "lora" / "small" / n for n in ("stack_a.safetensors", "stack_b.safetensors")]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return convert(str(FIXTURES / "small"), tmp_path_factory.mktemp("sa3-lora-gen") / "small")


def test_generate_with_lora_equals_applying_it_by_hand(weights):
    model = mag.load(weights)
    kw = dict(seconds=0.1, seed=7)
    base = model.generate("lofi house loop", **kw)
    with_lora = model.generate("lofi house loop", lora=f"{ADAPTER}:0.7", **kw)
    assert not np.array_equal(with_lora, base)  # the adapter is used
    np.testing.assert_array_equal(model.generate("lofi house loop", **kw), base)  # and removed afterwards
    handle = apply_loras(model.model.dit, model.model.conditioner, [(ADAPTER, 0.7)])
    try:
        by_hand = model.generate("lofi house loop", **kw)
    finally:
        handle.remove()
    np.testing.assert_array_equal(with_lora, by_hand)
    stacked = model.generate("lofi house loop", lora=[(STACK[0], 0.7), (STACK[1], 1.3)], **kw)
    assert not np.array_equal(stacked, base)


def test_parse_loras():
    specs = parse_loras("a.safetensors:0.5, b.safetensors")
    assert [(str(s.path), s.strength) for s in specs] == [("a.safetensors", 0.5), ("b.safetensors", 1.0)]
    with pytest.raises(UserError, match="empty entry"):
        parse_loras("a.safetensors,,b.safetensors")


def test_cli_lora_flag(weights, tmp_path, capsys):
    out = tmp_path / "l.wav"
    args = ["--model", "stable_audio_3", "--weights-dir", weights, "--prompt", "lofi house loop",
            "--seconds", "0.1", "--seed", "7", "--quiet"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        generate_cli.main([str(a) for a in [*args, "--lora", f"{ADAPTER}:0.7", "--output", out]])
    assert e.value.code == 0, capsys.readouterr().err
    audio, _ = sf.read(out, dtype="float32", always_2d=True)
    expected = mag.load(weights).generate("lofi house loop", seconds=0.1, seed=7, lora=f"{ADAPTER}:0.7")[0]
    np.testing.assert_array_equal(audio.T, expected)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        generate_cli.main(
            [str(a) for a in [*args, "--lora", tmp_path / "none.safetensors", "--output", "x.wav"]]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "none.safetensors" in err, err
    assert not Path("x.wav").exists()
