"""bench/decode_ab.py (the one-process MusicGen decode A/B, run on the GPU machine) on tiny models on the CPU:
`--a-set` / `--b-set` reach each side's own package, and a knob that does not exist stops the run.

- A = this checkout, B = a copy of it with a knob set on B only: the rounds run, and the report's note
  records both sides' settings;
- `apply_sets` sets the attribute of the named package's module to the parsed literal;
- a knob that names no attribute exits non-zero, naming it, before any model is built; a setting that is
  not module.NAME=literal stops with one line, not a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.scripts import ROOT, run_bench

# as tests/bench/test_sa_bench_counts.py does (monkeypatch.syspath_prepend trips over a stale pkg_resources)
sys.path.insert(0, str(ROOT / "bench"))


def run_ab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run_bench("decode_ab.py", "--b", str(ROOT), "--tiny", "--models", "small", "--rounds", "1",
                     "--steps", "2", "--out", str(tmp_path / "ab.md"), *args)  # fmt: skip


def test_knobs_reach_each_side_and_are_recorded(tmp_path):
    p = run_ab(tmp_path, "--b-set", "musicgen.layer_kernel.BLOCK=512")
    assert p.returncode == 0, p.stderr[-3000:]
    text = (tmp_path / "ab.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| small |")]
    assert len(rows) == 2 and all(float(r.rstrip(" |").rsplit("|", 1)[1]) > 0 for r in rows), text
    assert "A sets nothing; B sets ['musicgen.layer_kernel.BLOCK=512']" in text


def test_apply_sets_sets_one_packages_attribute(monkeypatch):
    import decode_ab

    from mlx_audio_generate.musicgen import layer_kernel as lk

    monkeypatch.setattr(lk, "BLOCK", None)
    monkeypatch.setattr(lk, "TIMING", False)
    decode_ab.apply_sets(
        "mlx_audio_generate", ["musicgen.layer_kernel.BLOCK=512", "musicgen.layer_kernel.TIMING=True"]
    )
    assert lk.BLOCK == 512 and lk.TIMING is True and lk.block_for(1024) == 512


def test_an_unknown_knob_stops_the_run(tmp_path):
    p = run_ab(tmp_path, "--a-set", "musicgen.layer_kernel.NO_SUCH_KNOB=1")
    assert p.returncode != 0
    assert "mlx_audio_generate.musicgen.layer_kernel has no NO_SUCH_KNOB" in p.stderr
    assert not (tmp_path / "ab.md").exists()


def test_a_malformed_setting_is_one_line(monkeypatch):
    import decode_ab

    for bad, msg in [
        ("BLOCK", "module.NAME=value"),
        ("musicgen.layer_kernel.BLOCK=big", "not a Python literal"),
    ]:
        with pytest.raises(SystemExit, match=msg):
            decode_ab.apply_sets("mlx_audio_generate", [bad])
