"""What a primitive costs the host in a compiled MLX call: views (reshape, transpose, slice) against kernels.

    python bench/host_probe.py --out host.md
    python bench/host_probe.py --ops 20 --calls 3     # a quick run (CPU: a smoke test)

Small models' DiT calls are host-bound on the GPU (docs/benchmarks.md): Stable Audio small's call is ~240
kernels but ~670 primitives, the rest views. Each variant is one compiled function over a tiny matrix whose
GPU work is negligible, so its pipelined pace is the host's cost: a chain of `--ops` matmuls, the same chain
with views between the matmuls, and a chain of copies. The cost of one view (or kernel) is the difference
from the plain chain, divided by the count.
"""

from __future__ import annotations

import argparse

from common import Report, device_line, log, mx
from dit_profile import pipelined

from mlx_audio_generate.devices import on_cuda


def chains(n: int) -> dict[str, tuple[int, object]]:
    """name -> (extra primitives a call over the matmul chain, fn)."""
    s = 32

    def matmuls(x, w):
        for _ in range(n):
            x = x @ w
        return x

    def reshapes(x, w):
        for _ in range(n):
            x = x.reshape(s * s).reshape(s, s) @ w
        return x

    def transposes(x, w):
        for _ in range(n):
            x = x.T.T @ w
        return x

    def slices(x, w):
        for _ in range(n):
            x = mx.concatenate([x, x])[:s] @ w  # the concatenate is a kernel: see "copies"
        return x

    def copies(x, w):
        for _ in range(n):
            x = mx.concatenate([x, x])[:s].reshape(s, s) @ w
        return x

    def layer_norms(x, w):
        for _ in range(n):
            x = mx.fast.layer_norm(x, None, None, 1e-5) @ w
        return x

    def attentions(x, w):
        for _ in range(n):
            q = x.reshape(1, 1, s, s)
            x = mx.fast.scaled_dot_product_attention(q, q, q, scale=1.0).reshape(s, s) @ w
        return x

    out = {
        "matmuls": (0, matmuls),
        "2 reshapes a matmul": (2 * n, reshapes),
        "2 transposes a matmul": (2 * n, transposes),
        "concatenate + slice a matmul": (2 * n, slices),
        "concatenate + slice + reshape a matmul": (3 * n, copies),
        "mx.fast.layer_norm a matmul": (n, layer_norms),
        "mx.fast SDPA (+ 2 reshapes) a matmul": (3 * n, attentions),
    }
    if on_cuda():
        kernel = mx.fast.cuda_kernel(
            name="host_probe_copy",
            input_names=["x"],
            output_names=["y"],
            source="const int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < 1024) y[i] = x[i];",
        )

        def customs(x, w):
            for _ in range(n):
                (y,) = kernel(inputs=[x], output_shapes=[x.shape], output_dtypes=[x.dtype],
                              grid=(s * s, 1, 1), threadgroup=(256, 1, 1))  # fmt: skip
                x = y @ w
            return x

        out["a custom kernel (mx.fast.cuda_kernel) a matmul"] = (n, customs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=200, help="matmuls a call")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args()
    rep = Report("The host's cost of a primitive in a compiled call", a.out)
    x = mx.random.normal((32, 32)) * 0.1
    w = mx.eye(32)
    mx.eval(x, w)
    fns = {name: (extra, mx.compile(fn)) for name, (extra, fn) in chains(a.ops).items()}
    paces: dict[str, float] = {}
    for _, fn in fns.values():
        mx.eval(fn(x, w))  # compiled before the clock
    for _ in range(a.rounds):  # alternating rounds; the best of each kept (the host's noise only adds)
        for name, (_, fn) in fns.items():
            pace = pipelined(lambda fn=fn: fn(x, w), a.calls)
            paces[name] = min(paces.get(name, pace), pace)
    base = paces["matmuls"]
    rows = []
    for name, (extra, _) in fns.items():
        each = (paces[name] - base) * 1000 / extra if extra else base * 1000 / a.ops
        log(f"{name}: {paces[name]:.3f} ms a call, {each:.2f} µs a primitive")
        rows.append([name, f"{paces[name]:.3f}", extra, f"{each:.2f}"])
    rep.table(
        ["chain", "ms a call", "primitives over the matmul chain", "µs a primitive"],
        rows,
        note=f"{device_line()}. {a.ops} matmuls of 32 x 32 a call, compiled; {a.calls} pipelined calls, the "
        f"best of {a.rounds} rounds. The matmul row's µs is a matmul's own (the whole call / {a.ops}); the "
        "others' are the extra time over it / the extra primitives.",
    )


if __name__ == "__main__":
    main()
