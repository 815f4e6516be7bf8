"""fp32 matmul GFLOP/s of MLX's CPU backend with its bundled BLAS and with each optimised BLAS found.

    python bench/blas.py [--lib PATH ...] [--out blas.md]

Each configuration runs in its own subprocess (a BLAS must be loaded before MLX first multiplies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (M, K, N): a square GEMM, T5-base FF on a 64-token prompt, a MusicGen-small decode step (CFG batch 2)
SHAPES = [(1024, 1024, 1024), (64, 768, 3072), (2, 1024, 4096), (256, 1536, 4608)]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
lib = {lib!r}
from mlx_audio_generate import _blas
if lib == "bundled":
    os.environ[_blas.ENV] = "off"
    path = _blas.load_blas()
else:
    os.environ[_blas.ENV] = lib
    path = _blas.load_blas()
    assert path == lib, (path, lib)
import mlx.core as mx
mx.set_default_device(mx.cpu)
res = {{}}
for m, k, n in {shapes!r}:
    a = mx.random.normal((m, k)); b = mx.random.normal((k, n)); mx.eval(a, b)
    mx.eval(a @ b)
    reps, t0 = 0, time.perf_counter()
    while True:
        mx.eval(a @ b); reps += 1
        dt = time.perf_counter() - t0
        if dt > 1.0 and reps >= 3:
            break
    res[f"{{m}}x{{k}}x{{n}}"] = 2 * m * k * n * reps / dt / 1e9
print(json.dumps({{"path": path, "gflops": res}}))
"""


def run(lib: str) -> dict:
    code = CHILD.format(root=str(ROOT), lib=lib, shapes=SHAPES)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        return {"path": lib, "error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    from mlx_audio_generate import _blas

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", action="append", help="BLAS library path(s) to try (default: every one found)")
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args()
    env = os.environ.pop(_blas.ENV, None)
    libs = args.lib or _blas.candidates()
    if env is not None:
        os.environ[_blas.ENV] = env
    rows = [("bundled (reference BLAS)", run("bundled"))] + [(lib, run(lib)) for lib in libs]
    keys = [f"{m}x{k}x{n}" for m, k, n in SHAPES]
    lines = [
        f"fp32 matmul GFLOP/s, MLX CPU, {os.cpu_count()} cores",
        "",
        "| BLAS | " + " | ".join(f"{k} (MxKxN)" for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |")
        else:
            lines.append(f"| {name} | " + " | ".join(f"{r['gflops'][k]:.1f}" for k in keys) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
