"""bench/gemm_probe.py on tiny shapes (CPU: the wall clock): every GEMM form and attention variant runs, and
the attention variants (query 0 apart and joined; attention_kernel) compute MLX's SDPA of the same inputs."""

from __future__ import annotations

from tests.bench.scripts import run_bench


def test_probe_runs_every_form(tmp_path):
    out = tmp_path / "probe.md"
    args = ["--tiny", "--calls", "1", "--ops", "1", "--dtype", "float32"]
    args += ["--gemms", "64x32x48:res,64x32x48:batched"]
    run = run_bench("gemm_probe.py", *args, "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 3 * 7 + 2 + 2 + 2 + 9, rows  # rows x GEMMs, batched, --gemms, --tokens, --attention
    checks = [ln for ln in run.stderr.splitlines() if "max |this - MLX's SDPA|" in ln]
    assert len(checks) == 3, run.stderr[-2000:]  # 1025x1025s, 1025x1025o, 1x1025o
    assert all(float(ln.rsplit(" ", 1)[1]) <= 1e-5 for ln in checks), checks
