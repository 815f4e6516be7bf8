"""The Oobleck residual units' dilated convolutions on the GPU: MLX's conv1d against `dilated_conv`'s
"subsequences" form, for every channel count / length that Stable Audio small's and 1.0's decoders (and
encoders) run, fp16, batch 1.

    PYTHONPATH=/tmp/site:$PWD python3 bench/oobleck_conv_probe.py --out $OUT/conv.md

Each cell is the median of two timed batches of `--reps` chained calls after three warm-up calls, in ms. On
CUDA, MLX's conv1d runs cuDNN with the first plan of its heuristic; for some shapes that plan is ~20x slower
than the rest (bench/results/2026-12-02-h200-r7/3_conv_probe.txt), which is what
`codecs/oobleck.dilated_conv`'s "auto" rule routes around.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import Report, log, mx

SHAPES = [(1024, 2048), (1024, 8192), (1024, 16384), (512, 16384), (512, 65536), (256, 65536), (256, 262144),
          (128, 262144), (128, 524288), (128, 1048576), (128, 2097152)]  # fmt: skip


def timed(fn, reps: int) -> float:
    for _ in range(3):
        mx.eval(fn())
    runs = []
    for _ in range(2):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(reps)])
        mx.synchronize()
        runs.append((time.perf_counter() - t0) / reps * 1e3)
    return statistics.median(runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--out")
    a = p.parse_args()
    import mlx.nn as nn

    from mlx_audio_generate.codecs.oobleck import DILATIONS, dilated_conv

    dt = getattr(mx, a.dtype)
    rep = Report(f"Oobleck dilated conv ({a.dtype}, ms)", a.out)
    rows = []
    for c, length in SHAPES:
        x = mx.random.normal((1, length, c)).astype(dt)
        row: list = [c, length]
        for d in DILATIONS:
            conv = nn.Conv1d(c, c, 7, dilation=d, padding=3 * d)
            conv.set_dtype(dt)
            mx.eval(x, conv.parameters())
            for mode in ("conv", "subsequences"):
                if mode == "conv" or d > 1:
                    row.append(
                        timed(lambda conv=conv, d=d, x=x, mode=mode: dilated_conv(x, conv, d, mode), a.reps)
                    )
                else:
                    row.append(None)  # dilation 1: the same conv
        log(f"{c} channels x {length}: done")
        rows.append(row)
        del x
    header = ["channels", "samples"] + [f"d{d} {m}" for d in DILATIONS for m in ("conv", "subsequences")]
    rep.table(header, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
