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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(1024, 2048), (1024, 8192), (1024, 16384), (512, 16384), (512, 65536), (256, 65536), (256, 262144),
          (128, 262144), (128, 524288), (128, 1048576), (128, 2097152)]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--out")
    a = p.parse_args()
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_audio_generate.codecs.oobleck import DILATIONS, dilated_conv

    def timed(fn) -> float:
        for _ in range(3):
            mx.eval(fn())
        runs = []
        for _ in range(2):
            mx.synchronize()
            t0 = time.perf_counter()
            mx.eval([fn() for _ in range(a.reps)])
            mx.synchronize()
            runs.append((time.perf_counter() - t0) / a.reps * 1e3)
        return statistics.median(runs)

    dt = getattr(mx, a.dtype)
    head = "| channels | samples | " + " | ".join(f"d{d} conv | d{d} subsequences" for d in DILATIONS) + " |"
    lines = [f"## Oobleck dilated conv ({a.dtype}, ms, {mx.default_device()})", "", head,
             "|---:|---:|" + "---:|" * (2 * len(DILATIONS))]  # fmt: skip
    for c, length in SHAPES:
        x = mx.random.normal((1, length, c)).astype(dt)
        cells = []
        for d in DILATIONS:
            conv = nn.Conv1d(c, c, 7, dilation=d, padding=3 * d)
            conv.set_dtype(dt)
            mx.eval(x, conv.parameters())
            for mode in ("conv", "subsequences"):
                if mode == "conv" or d > 1:
                    ms = timed(lambda conv=conv, d=d, x=x, mode=mode: dilated_conv(x, conv, d, mode))
                    cells.append(f"{ms:.3f}")
                else:
                    cells.append("–")  # dilation 1: the same conv
        lines.append(f"| {c} | {length} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
        del x
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
