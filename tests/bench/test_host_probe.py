"""bench/host_probe.py on the CPU: every chain runs and is tabled, each with its count of extra primitives."""

from __future__ import annotations

from tests.bench.scripts import run_bench


def test_probe_runs_every_chain(tmp_path):
    out = tmp_path / "host.md"
    run = run_bench(
        "host_probe.py", "--ops", "4", "--calls", "2", "--rounds", "1", "--out", str(out), timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [ln.split("|")[1:-1] for ln in out.read_text().splitlines() if ln.startswith("| ")][1:]
    names = [r[0].strip() for r in rows]
    assert names[0] == "matmuls" and "mx.fast SDPA (+ 2 reshapes) a matmul" in names, names
    assert [int(r[2]) for r in rows] == [0, 8, 8, 8, 12, 4, 12], rows  # the CPU has no custom-kernel chain
