"""bench/kernel_probe.py (the MusicGen decode kernel probe, run on the GPU machine) in its CPU `--dry-run`:
the child processes, the table and the failure handling, without CUDA.

- a dry run writes one markdown table with the kernel cases (the MLX ops timed, the CUDA-only variants
  marked skipped) and the whole-step rows (steps/s > 0, primitives per step > 0, the logits of the kernel
  modes equal to the off mode: on the CPU every mode takes the reference ops);
- a case that fails (an unknown step mode) is a FAILED row and the other cases still run; a child past its
  timeout is a FAILED row; cases past the time budget are listed as skipped.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench.scripts import run_bench


def probe(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[str, str]:
    out = tmp_path / "probe.md"
    p = run_bench("kernel_probe.py", "--dry-run", "--out", str(out), *args, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return out.read_text(), p.stderr


def rows_of(text: str) -> list[list[str]]:
    lines = [x for x in text.splitlines() if x.startswith("| ") and not x.startswith("| case")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines]


def test_dry_run_table_and_a_failing_case(tmp_path):
    args = [
        "--models",
        "small",
        "--rows",
        "2",
        "--envs",
        "default",
        "--modes",
        "off,new,layer,bogus",
        "--steps",
        "2",
    ]
    text, _ = probe(tmp_path, *args)
    assert "| case | variant | status | max abs err | value | unit | note |" in text
    rows = rows_of(text)
    by = {(r[0], r[1]): r for r in rows}
    assert by[("kernels", "–")][2].startswith("skipped: no CUDA")
    for prod in ("qkv", "fc1", "out", "fc2"):
        r = by[(f"small {prod} B=2", "MLX ops")]
        assert r[2] == "ok" and float(r[4]) > 0 and r[5] == "us/call"
    for mode in ("off", "new", "layer"):
        r = by[("step small", mode)]
        assert r[2] == "ok" and float(r[4]) > 0 and r[5] == "steps/s"
    for mode in ("off", "new"):
        r = by[("step small primitives", mode)]
        assert r[2] == "ok" and float(r[4]) > 0 and r[5] == "primitives"
    for mode in ("new vs off", "v1 vs off", "layer vs off"):
        assert by[("step small logits", mode)][3] == "0"  # CPU: every mode runs the reference ops
    assert by[("step small", "bogus (first run)")][2].startswith("FAILED: KeyError")
    assert float(by[("step small", "new (first run)")][4]) > 0
    assert by[("step small", "bogus")][2] == "FAILED: no round ran"


def test_timeout_and_budget_are_rows(tmp_path):
    text, _ = probe(tmp_path, "--models", "", "--envs", "default", "--step-timeout", "1")
    (row,) = rows_of(text)
    assert row[0] == "step small [default]" and row[2].startswith("FAILED: timed out")
    text, _ = probe(tmp_path, "--models", "small", "--budget", "5", "--envs", "default,no-graphs")
    rows = rows_of(text)
    assert [r[0] for r in rows] == ["kernels", "step small [default]", "step small [no-graphs]"]
    assert all(r[2] == "skipped: time budget" for r in rows)
