"""MLX's fused attention (mx.fast.scaled_dot_product_attention) against two matmuls around a precise
softmax, at the Stable Audio DiTs' attention shapes and a few others, on the GPU.

    PYTHONPATH=/tmp/site:$PWD python3 bench/sdpa_probe.py --out $OUT/sdpa.md
    MLX_CUDA_USE_CUDNN_SDPA=0 PYTHONPATH=/tmp/site:$PWD python3 bench/sdpa_probe.py   # MLX's own kernel

Each time is one of 10 calls chained in one graph (each call's output is the next one's queries, as the
blocks of a DiT call follow one another), after 3 warm-up runs. On CUDA, MLX runs these through cuDNN unless
MLX_CUDA_USE_CUDNN_SDPA=0. Results: bench/results/2026-12-02-h200-r7/3_sdpa_probe.txt.
"""

from __future__ import annotations

import argparse
import os
import time

from common import Report, mx

# batch, query heads, queries, keys, KV heads: 1.0's self / cross-attention (CFG batch 2), small's (batch 1)
SHAPES = [(2, 24, 1025, 1025, 24), (2, 24, 1025, 130, 12), (2, 24, 1025, 130, 24), (1, 16, 257, 257, 16),
          (1, 16, 257, 65, 16), (4, 24, 1025, 1025, 24), (2, 24, 4096, 4096, 24)]  # fmt: skip
CHAIN = 10


def per_call(fn, runs: int = 20) -> float:
    for _ in range(3):
        mx.eval(fn())
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval([fn() for _ in range(runs)])
    mx.synchronize()
    return (time.perf_counter() - t0) / runs / CHAIN


def chained(q: mx.array, k: mx.array, v: mx.array, fused: bool) -> mx.array:
    groups = q.shape[1] // k.shape[1]
    o = q
    for _ in range(CHAIN):
        if fused:
            o = mx.fast.scaled_dot_product_attention(o, k, v, scale=0.125)
            continue
        # K / V repeated to the query heads in every call, as a block without a fused kernel would
        kk, vv = (k, v) if groups == 1 else (mx.repeat(k, groups, axis=1), mx.repeat(v, groups, axis=1))
        o = mx.softmax((o * 0.125) @ kk.swapaxes(-1, -2), axis=-1, precise=True) @ vv
    return o


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out")
    a = p.parse_args()
    cudnn = os.environ.get("MLX_CUDA_USE_CUDNN_SDPA", "1") != "0"
    rep = Report(f"Attention, fp16 (MLX_CUDA_USE_CUDNN_SDPA={'1' if cudnn else '0'})", a.out)
    dt = mx.float16
    rows = []
    for b, h, n, s, hk in SHAPES:
        q = mx.random.normal((b, h, n, 64)).astype(dt)
        k = mx.random.normal((b, hk, s, 64)).astype(dt)
        v = mx.random.normal((b, hk, s, 64)).astype(dt)
        mx.eval(q, k, v)
        tflop = 4 * b * h * n * s * 64 / 1e12
        fused = per_call(lambda q=q, k=k, v=v: chained(q, k, v, True))
        matmul = per_call(lambda q=q, k=k, v=v: chained(q, k, v, False))
        rows.append([b, h, n, s, hk, fused * 1e6, tflop / fused, matmul * 1e6, tflop / matmul])
    header = ["batch", "heads", "queries", "keys", "KV heads", "sdpa us", "sdpa TFLOP/s", "matmul us",
              "matmul TFLOP/s"]  # fmt: skip
    rep.table(header, rows, note=f"One of {CHAIN} chained calls each.")


if __name__ == "__main__":
    main()
