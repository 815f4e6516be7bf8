"""Stable Audio Open 1.0's block GEMMs and self-attention, each formulation timed in situ on the GPU by CUPTI:
does the token count (1025 = 1024 latents + the prepended global token), the batch layout or cuBLAS's bias /
residual epilogue change the kernel cuBLAS / cuDNN pick and its time?

    python bench/gemm_probe.py --out gemm.md
    python bench/gemm_probe.py --tiny     # a smoke test of the script (CPU: no timeline, MLX's clock only)

Each variant runs `--ops` distinct weights a call (as a block's GEMMs each read their own), pipelined as the
samplers run; on CUDA the µs an op are the kernels' own time in the steady state (torch.profiler's CUPTI
timeline, bench/dit_profile.timeline), elsewhere the wall clock.
"""

from __future__ import annotations

import argparse
from collections import Counter

from common import Report, device_line, log, mx, mx_dtype, parse_list
from dit_profile import pipelined, timeline

WIDTH, FF, HEADS, HEAD_DIM = 1536, 6144, 24, 64  # stable-audio-open-1.0's DiT


def gemm_variants(rows: list[int], tiny: bool) -> list[tuple[str, int, int, int, str]]:
    """(label, M, K, N, form): form "mm" (x @ W.T), "bias" (addmm with a bias row), "res" (addmm with a
    residual matrix: the attentions' out projections), "batched" (a (2, M/2, K) input)."""
    d, f = (WIDTH, FF) if not tiny else (64, 256)
    out = []
    for m in rows:
        out += [
            (f"QKV, {m} rows", m, d, 3 * d, "mm"),
            (f"attention out + residual, {m} rows", m, d, d, "res"),
            (f"attention out, {m} rows", m, d, d, "mm"),
            (f"FF in + bias, {m} rows", m, d, 2 * f, "bias"),
            (f"FF in, {m} rows", m, d, 2 * f, "mm"),
            (f"FF out + bias, {m} rows", m, f, d, "bias"),
            (f"FF out, {m} rows", m, f, d, "mm"),
        ]
    m = rows[0]
    if m % 2 == 0:
        out += [(f"QKV, 2 x {m // 2} rows batched", m, d, 3 * d, "batched"),
                (f"FF in, 2 x {m // 2} rows batched", m, d, 2 * f, "batched")]  # fmt: skip
    return out


def gemm_call(m: int, k: int, n: int, form: str, ops: int, dt: mx.Dtype):
    xs = [mx.random.normal((m, k)).astype(dt) for _ in range(ops)]
    ws = [(mx.random.normal((n, k)) * k**-0.5).astype(dt) for _ in range(ops)]
    cs = [mx.random.normal((m, n) if form == "res" else (n,)).astype(dt) for _ in range(ops)]
    if form == "batched":
        xs = [x.reshape(2, m // 2, k) for x in xs]
    mx.eval(xs, ws, cs)

    def call():
        if form in ("bias", "res"):
            return [mx.addmm(c, x, w.T) for x, w, c in zip(xs, ws, cs, strict=True)]
        return [x @ w.T for x, w in zip(xs, ws, strict=True)]

    return call, 2.0 * m * k * n


def sdpa_call(
    nq: int,
    nk: int,
    ops: int,
    dt: mx.Dtype,
    tiny: bool,
    split: bool = False,
    ours: bool = False,
    heads_last: bool = True,
):
    """SDPA of nq queries over nk keys (batch 2), q / k / v heads-last underneath as the DiT's (qk_kernel's
    views), or (B, H, N, D) arrays without `heads_last`. `split`: query 0 (the prepended token) apart from
    the other nq - 1 (it by `attention_kernel`), joined after (heads-last); `ours`: `attention_kernel.attend`
    forced past its MAX_WORK."""
    from mlx_audio_generate import attention_kernel

    h, d = (HEADS, HEAD_DIM) if not tiny else (2, 16)

    def heads(n):
        if not heads_last:
            return mx.random.normal((2, h, n, d)).astype(dt)
        return mx.random.normal((2, n, h, d)).astype(dt).transpose(0, 2, 1, 3)

    mx.random.seed(0)
    qkv = [(heads(nq), heads(nk), heads(nk)) for _ in range(ops)]
    mx.eval(qkv)

    def one(q, k, v):
        if ours:
            return attention_kernel.attend(q, k, v, d**-0.5, force=True)
        if not split:
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=d**-0.5).transpose(0, 2, 1, 3)
        o0 = attention_kernel.attend(q[:, :, :1], k, v, d**-0.5)
        o1 = mx.fast.scaled_dot_product_attention(q[:, :, 1:], k, v, scale=d**-0.5).transpose(0, 2, 1, 3)
        return mx.concatenate([o0, o1], axis=1)

    def call():
        return [one(*t) for t in qkv]

    return call, 4.0 * 2 * h * nq * nk * d


def measure(call, flops: float, ops: int, calls: int) -> tuple[float, str]:
    """(µs an op, its main kernel's name) in situ on CUDA; the wall clock elsewhere."""
    ks = timeline(call, calls)
    if not ks:
        return 1000 * pipelined(call, calls) / ops, "(wall clock)"
    per_op = sum(k["dur"] for k in ks) / (calls * ops)  # the window may hold part of one call more
    main = Counter(k["name"] for k in ks).most_common(1)[0][0]
    return per_op, main[:90]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="2050,2048,1025", help="GEMM rows: the CFG pair's 2 x 1025, ...")
    p.add_argument("--tokens", default="1025,1024", help="self-attention lengths (batch 2, 24 heads of 64)")
    p.add_argument(
        "--attention",
        default="1025x1025,1024x1024,1024x1025,1025x1024,1x1025,1025x1025s,1025x1025o,1x1025o,1088x1088",
        help="queries x keys (heads-last views); a trailing s: query 0 apart, o: ours",
    )
    p.add_argument("--gemms", default="", help="more GEMMs: MxKxN[:mm|bias|res|batched], comma-separated")
    p.add_argument("--only-attention", action="store_true", help="no GEMMs but --gemms, no --tokens")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--ops", type=int, default=8)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    dt = mx_dtype(a.dtype)
    rep = Report(f"Stable Audio Open 1.0's GEMMs and self-attention, in situ ({a.dtype})", a.out)
    rows_ = [int(r) for r in a.rows.split(",")]
    if a.tiny:
        rows_ = [r // 16 for r in rows_]
    table = []
    gemms = [] if a.only_attention else gemm_variants(rows_, a.tiny)
    for spec in parse_list(a.gemms):  # MxKxN[:form]
        dims, _, form = spec.partition(":")
        m, k, n = (int(v) // (16 if a.tiny else 1) for v in dims.split("x"))
        gemms.append((f"{dims} ({form or 'mm'})", m, k, n, form or "mm"))
    for label, m, k, n, form in gemms:
        call, flops = gemm_call(m, k, n, form, a.ops, dt)
        us, name = measure(call, flops, a.ops, a.calls)
        log(f"{label}: {us:.1f} µs ({name})")
        table.append([label, f"{m} x {k} x {n}", us, f"{flops / us / 1e6:.0f}", name])
    for tokens in [] if a.only_attention else (int(t) for t in a.tokens.split(",")):
        tokens = tokens if not a.tiny else tokens // 16
        call, flops = sdpa_call(tokens, tokens, a.ops, dt, a.tiny, heads_last=False)
        us, name = measure(call, flops, a.ops, a.calls)
        table.append([f"self-attention, {tokens} tokens", "", us, f"{flops / us / 1e6:.0f}", name])
    for spec in a.attention.split(","):
        split, ours = spec.endswith("s"), spec.endswith("o")
        nq, nk = (int(v) for v in spec.rstrip("so").split("x"))
        if a.tiny:
            nq, nk = nq // 16 + 1, nk // 16 + 1
        call, flops = sdpa_call(nq, nk, a.ops, dt, a.tiny, split, ours)
        if split or ours:  # the same attention as MLX's SDPA of the same inputs, or the probe is wrong
            got = call()[0]  # both calls' first inputs are the same draws (seeded)
            want = sdpa_call(nq, nk, 1, dt, a.tiny)[0]()[0]
            err = mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item()
            log(f"attention {spec}: max |this - MLX's SDPA| {err:.2e}")
        us, name = measure(call, flops, a.ops, a.calls)
        log(f"attention {spec}: {us:.1f} µs ({name})")
        what = "query 0 apart, joined" if split else "attention_kernel (ours)" if ours else "MLX's SDPA"
        label = f"attention, {nq} queries x {nk} keys, {what}"
        table.append([label, "", us, f"{flops / us / 1e6:.0f}", name])
    rep.table(
        ["op", "M x K x N", "µs an op", "TFLOP/s", "main kernel"],
        table,
        note=f"{device_line()}. {a.ops} distinct weights a call, {a.calls} pipelined calls; on CUDA the "
        "kernels' own time (CUPTI), elsewhere the wall clock.",
    )


if __name__ == "__main__":
    main()
