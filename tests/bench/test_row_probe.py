"""bench/row_probe.py without ncu: every case runs and ours agrees with MLX's ops (on the CPU the row and
q / k functions are MLX's ops themselves, so exactly; on the GPU this is the probe's own smoke test)."""

from __future__ import annotations

import mlx.core as mx

from tests.bench.scripts import run_bench


def test_probe_runs_every_case():
    run = run_bench("row_probe.py", "--tokens", "5", "--slices", "8,16", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == [
        "layer norm", "add + layer norm", "GLU gate", "q / k, 8 vectors a warp", "q / k, 16 vectors a warp"
    ]  # fmt: skip
    errors = [float(ln.split("error ")[1].split()[0]) for ln in lines]
    on_cuda = mx.default_device() == mx.gpu and mx.cuda.is_available()
    assert max(errors) <= (2e-3 if on_cuda else 0.0), lines
