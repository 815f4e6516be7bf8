"""MLX's fused attention (mx.fast.scaled_dot_product_attention), two matmuls around a precise softmax, and
our short-sequence kernel (mlx_audio_generate/attention_kernel.py) at the Stable Audio DiTs' and T5's
attention shapes, on the GPU.

    PYTHONPATH=/tmp/site:$PWD python3 bench/sdpa_probe.py --out $OUT/sdpa.md
    MLX_CUDA_USE_CUDNN_SDPA=0 PYTHONPATH=/tmp/site:$PWD python3 bench/sdpa_probe.py   # MLX's own kernel

Each time is one of 10 calls chained in one compiled graph (each call's output is the next one's queries,
as the blocks of a compiled DiT call follow one another), after 3 warm-up runs: "us" is the wall time per
call, "host us" the time `mx.async_eval` takes to encode it (the host's share; the GPU runs behind it).
The kernel's "err" is its largest deviation from MLX's attention of the float32 inputs on the CPU,
relative to that output's largest value. `--sweep` also times the kernel's warps per block. On CUDA, MLX
runs its fused attention through cuDNN unless MLX_CUDA_USE_CUDNN_SDPA=0. Results:
bench/results/2026-12-02-h200-r7/3_sdpa_probe.txt (before the kernel), bench/results/2026-12-02-h200-r8/.
"""

from __future__ import annotations

import argparse
import os
import time

from common import Report, mx

from mlx_audio_generate import attention_kernel as ak

# name, batch, query heads, queries, keys, KV heads, head dim, masked
SHAPES = [
    ("small self", 1, 8, 257, 257, 8, 128, False),
    ("small cross", 1, 8, 257, 65, 8, 128, False),
    ("T5-base, 64 tokens", 1, 12, 64, 64, 12, 64, True),
    ("1.0 cross (CFG)", 2, 24, 1025, 130, 24, 64, False),
    ("1.0 self (CFG)", 2, 24, 1025, 1025, 24, 64, False),
]
SWEEP = [1, 2, 4, 8]  # the kernel's warps per block
IMPLS = ("sdpa", "kernel", "matmul")
CHAIN = 10


def per_call(fn, runs: int = 20) -> tuple[float, float]:
    """(wall, host) seconds per chained call; `fn` compiled, so Python's graph building is not timed."""
    fn = mx.compile(fn)
    for _ in range(3):
        mx.eval(fn())
    mx.synchronize()
    host = 0.0
    t0 = time.perf_counter()
    for _ in range(runs):
        out = fn()
        t1 = time.perf_counter()
        mx.async_eval(out)
        host += time.perf_counter() - t1
    mx.synchronize()
    return (time.perf_counter() - t0) / runs / CHAIN, host / runs / CHAIN


def chained(q, k, v, mask, impl: str) -> mx.array:
    groups = q.shape[1] // k.shape[1]
    o = q
    for _ in range(CHAIN):
        if impl == "sdpa":
            o = mx.fast.scaled_dot_product_attention(o, k, v, scale=0.125, mask=mask)
        elif impl == "kernel":
            o = ak.attend(o, k, v, 0.125, mask, force=True).transpose(0, 2, 1, 3)
        else:
            # K / V repeated to the query heads in every call, as a block without a fused kernel would
            kk, vv = (k, v) if groups == 1 else (mx.repeat(k, groups, axis=1), mx.repeat(v, groups, axis=1))
            s = (o * 0.125) @ kk.swapaxes(-1, -2)
            o = mx.softmax(s if mask is None else s + mask, axis=-1, precise=True) @ vv
    return o


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out")
    p.add_argument("--sweep", action="store_true", help="also time the kernel's launch shapes")
    a = p.parse_args()
    cudnn = os.environ.get("MLX_CUDA_USE_CUDNN_SDPA", "1") != "0"
    rep = Report(f"Attention, fp16 (MLX_CUDA_USE_CUDNN_SDPA={'1' if cudnn else '0'})", a.out)
    dt = mx.float16
    rows, sweep_rows = [], []
    for name, b, h, n, s, hk, d, masked in SHAPES:
        mx.random.seed(0)
        q = mx.random.normal((b, h, n, d)).astype(dt)
        k = mx.random.normal((b, hk, s, d)).astype(dt)
        v = mx.random.normal((b, hk, s, d)).astype(dt)
        mask = (mx.random.normal((1, h, n, s)) * 2).astype(dt) if masked else None
        mx.eval(q, k, v, mask)
        with mx.stream(mx.cpu):  # float32 on the CPU: MLX-CUDA's float32 products may round through TF32
            exact = ak.reference(*(x.astype(mx.float32) for x in (q, k, v)), 0.125, mask)
            mx.eval(exact)
        err = mx.abs(ak.attend(q, k, v, 0.125, mask, force=True).astype(mx.float32) - exact).max()
        err = (err / mx.abs(exact).max()).item()
        tflop = 4 * b * h * n * s * d / 1e12
        row = [name, f"{b}x{h}x{n}x{s} (KV {hk}, D {d})"]
        for impl in IMPLS:
            wall, host = per_call(lambda q=q, k=k, v=v, mask=mask, impl=impl: chained(q, k, v, mask, impl))
            row += [wall * 1e6, host * 1e6, tflop / wall]
        rows.append([*row, f"{err:.1e}"])
        if a.sweep:
            for warps in SWEEP:
                ak.WARPS = warps
                wall, host = per_call(lambda q=q, k=k, v=v, mask=mask: chained(q, k, v, mask, "kernel"))
                sweep_rows.append([name, warps, wall * 1e6, host * 1e6, tflop / wall])
            ak.WARPS = 4
    impls = [f"{i} {c}" for i in IMPLS for c in ("us", "host us", "TFLOP/s")]
    rep.table(["shape", "B x H x N x S", *impls, "kernel err"], rows,
              note=f"One of {CHAIN} chained calls each.")  # fmt: skip
    if sweep_rows:
        rep.table(["shape", "warps / block", "us", "host us", "TFLOP/s"], sweep_rows)


if __name__ == "__main__":
    main()
