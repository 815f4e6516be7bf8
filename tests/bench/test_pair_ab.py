"""bench/pair_ab.py on tiny models (CPU): both families' guided DiT call with the pair's shortcuts (A) and
without one or both (B) run, agree to float32 rounding, and are tabled."""

from __future__ import annotations

import pytest

from tests.bench.scripts import run_bench


@pytest.mark.parametrize("b_side", ["null", "share", "both", "gemm"])
def test_ab_runs_both_families(tmp_path, b_side):
    out = tmp_path / "ab.md"
    args = ["--tiny", "--calls", "1", "--rounds", "1", "--dtype", "float32", "--models", "sa-1.0,sa3-small"]
    args += ["--b", b_side]
    run = run_bench("pair_ab.py", *args, "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| Stable Audio")]
    assert [r.split(",")[0] for r in rows] == ["| Stable Audio Open 1.0", "| Stable Audio 3 small"]
    assert all(float(r.rstrip(" |").rsplit("|", 1)[1]) <= 1e-4 for r in rows), rows
