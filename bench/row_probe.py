"""The DiT's memory-bound row operations alone, each kernel timed by Nsight Compute: ours against MLX's ops.

    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \\
        --print-units base --log-file $OUT/rows.csv python3 bench/row_probe.py --ncu
    python3 bench/dit_profile.py --parse $OUT/rows.csv --out $OUT/rows.md

At Stable Audio 1.0's shapes (the CFG pair: 2 x 1025 tokens of 1536, 24 heads of 64, a 6144-wide GLU), with
random fp16 inputs: LayerNorm, the residual add followed by LayerNorm (MLX's add, then the norm, against
`row_kernels.add_layer_norm`), the GLU gate, and q / k from the fused QKV product (MLX's ops against
`qk_kernel.qk` for each `--slices`, which sets `qk_kernel.MAX_SLICES`; the template value is in the
kernel's name). Each runs `--calls` times between cuProfilerStart and cuProfilerStop after a warm-up, so
ncu times every call alone (caches flushed: each kernel reads from DRAM). Without `--ncu` it checks each of
ours against MLX's result and prints the largest relative error (a smoke test; the GPU tests are
tests/test_row_kernels.py and tests/test_qk_kernel.py).
"""

from __future__ import annotations

import argparse

from common import mx, parse_list
from dit_profile import profiled

from mlx_audio_generate import qk_kernel, row_kernels
from mlx_audio_generate.diffusion.dit_parts import rope_inv_freq


def cases(rows: tuple[int, int], d: int, heads: int, ff: int, slices: list[int]) -> list[tuple]:
    """(label, ours, MLX's) thunks at these shapes."""
    b, n = rows
    mx.random.seed(0)
    x, r = mx.random.normal((b, n, d)).astype(mx.float16), mx.random.normal((b, n, d)).astype(mx.float16)
    w, bias = mx.random.normal((d,)).astype(mx.float16), mx.random.normal((d,)).astype(mx.float16)
    h = mx.random.normal((b, n, 2 * ff)).astype(mx.float16)
    qkv = mx.random.normal((b, n, 3 * d)).astype(mx.float16)
    hd = d // heads
    rot = max(hd // 2, 32)
    periods = 1.0 / mx.array(rope_inv_freq(rot))
    mx.eval(x, r, w, bias, h, qkv, periods)
    glu_ops = mx.compile(row_kernels.glu_reference)  # what the compiled DiT ran before the kernel

    def with_slices(s: int):
        def run():
            qk_kernel.MAX_SLICES = s
            return qk_kernel.qk(qkv, heads, rot, periods)

        return run

    out = [
        ("layer norm", lambda: row_kernels.layer_norm(x, w, bias, 1e-5),
         lambda: row_kernels.layer_norm_reference(x, w, bias, 1e-5)),
        ("add + layer norm", lambda: row_kernels.add_layer_norm(x, r, w, bias, 1e-5),
         lambda: (x + r, row_kernels.layer_norm_reference(x + r, w, bias, 1e-5))),
        ("GLU gate", lambda: row_kernels.glu(h), lambda: glu_ops(h)),
    ]  # fmt: skip
    ref_qk = lambda: qk_kernel.reference(qkv, heads, rot, periods)  # noqa: E731
    out += [(f"q / k, {s} vectors a warp", with_slices(s), ref_qk) for s in slices]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ncu", action="store_true", help="bracket the timed calls for ncu")
    p.add_argument("--calls", type=int, default=5, help="calls of each kernel in the profiled range")
    p.add_argument("--slices", default="4,8,12,16", help="qk_kernel.MAX_SLICES values")
    p.add_argument("--tokens", type=int, default=1025)
    a = p.parse_args()
    slices = parse_list(a.slices, int)
    todo = cases((2, a.tokens), 1536, 24, 6144, slices)
    default = qk_kernel.MAX_SLICES
    for _, ours, ref in todo:  # warm-up: every kernel compiled before the profiled range
        mx.eval(ours(), ref())
    qk_kernel.MAX_SLICES = default
    if not a.ncu:
        for label, ours, ref in todo:
            got, want = ours(), ref()
            got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
            err = max(
                (mx.abs(g.astype(mx.float32) - e.astype(mx.float32)).max() / mx.abs(e).max()).item()
                for g, e in zip(got, want, strict=True)
            )
            print(f"{label}: max relative error {err:.2e} against MLX's ops")
        qk_kernel.MAX_SLICES = default
        return

    def run():
        for _, ours, ref in todo:
            for _ in range(a.calls):
                mx.eval(ours())
                mx.eval(ref())

    profiled(run)
    qk_kernel.MAX_SLICES = default
    print(f"profiled {len(todo)} cases x {a.calls} calls")


if __name__ == "__main__":
    main()
