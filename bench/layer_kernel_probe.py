"""Where the one-kernel MusicGen decoder layer's time goes (musicgen/layer_kernel.py), on the GPU.

    PYTHONPATH=/tmp/site:$PWD python3 bench/layer_kernel_probe.py --out $OUT/layer.md

Times chains of `--launches` launches of one layer (its output fed to the next launch, so they run one after
another, as in a decode step) for each width and launch shape, with random fp16 weights and a cache of
`--cached` positions: us per launch; the host's part of it (building and encoding the launches until
`mx.async_eval` returns; MLX also blocks there when too much work is in flight, so "host ~ whole" means
host-bound or GPU-bound, "host << whole" means GPU-bound); and the weight bytes per launch over that time. A
width of 256 reads ~1.8 MB per launch, so its time is the fixed cost of a launch. Launch shapes: threads per
block x blocks per SM (every block must be resident: 2 per SM only where two fit).

A chain launches ONE layer's weights over and over, so whatever stays in L2 from one launch to the next
helps it; a decode step streams every layer's weights in turn. Decide L2 policies with bench/decode_ab.py,
not here: evict-first weight loads measured 4-20% faster per launch in this probe and +1% to -4% in the
decode (bench/results/2026-12-01-h200-r6/).

`--timing` adds, per width, where one launch's GPU time goes: block 0's globaltimer at its start, at each
grid barrier (arrival: block 0's work of the stage done; departure: every block arrived) and at its end
(layer_kernel.TIMING), medians over the chain: "work" is each stage of block 0, "wait" each barrier, "gap"
the time from one launch's end to the next one's start.

`--absorbed` adds the first launch shape (and its TIMING build) with the cross-attention absorbed
(layer_kernel.absorb_cross: kq and vo in place of W_q and W_o).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def stage_times(lk, mx, scratch: list) -> str:
    """The medians over a chain's launches of block 0's stage and barrier times, as a table."""
    import statistics

    mx.eval(scratch)
    runs = [lk.timestamps(s) for s in scratch]
    n = min(k for _, k in runs)
    cols: dict[str, list[float]] = {}
    for j, (t, _) in enumerate(runs):
        marks = [t[0], *t[2 : 2 + 2 * n], t[1]]  # start, (arrive, leave) per barrier, end
        for k in range(len(marks) - 1):
            name = f"wait {k // 2 + 1}" if k % 2 else f"work {k // 2 + 1}"
            cols.setdefault(name, []).append(((marks[k + 1] - marks[k]) % 2**32) / 1e3)
        cols.setdefault("whole", []).append(((t[1] - t[0]) % 2**32) / 1e3)
        if j + 1 < len(runs):
            cols.setdefault("gap", []).append(((runs[j + 1][0][0] - t[1]) % 2**32) / 1e3)
    names = list(cols)
    vals = [f"{statistics.median(cols[c]):.1f}" for c in names]
    return "| " + " | ".join(names) + " |\n|" + "---:|" * len(names) + "\n| " + " | ".join(vals) + " |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="256,1024,1536,2048")
    p.add_argument("--shapes", default="512x1,256x1,256x2", help="threads x blocks per SM")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--cached", type=int, default=500)
    p.add_argument("--text", type=int, default=12)
    p.add_argument("--launches", type=int, default=96)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timing", action="store_true", help="also where one launch's time goes (TIMING build)")
    p.add_argument("--absorbed", action="store_true", help="also the absorbed cross-attention")
    p.add_argument("--out")
    a = p.parse_args()
    import mlx.core as mx

    from mlx_audio_generate.musicgen import layer_kernel as lk

    if not (mx.default_device() == mx.gpu and mx.cuda.is_available()):
        print("needs MLX's CUDA backend")
        return 2
    dt = mx.float16
    lines = [
        "| width | launch shape | us / launch | host us / launch | weight GB/s | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    stages: list[tuple[str, str]] = []
    for d in [int(w) for w in a.widths.split(",")]:
        f, h, b = 4 * d, d // 64, a.rows
        key = iter(mx.random.split(mx.random.key(0), 32))

        def rnd(*shape, scale=1.0, key=key):
            return (mx.random.normal(shape, key=next(key)) * scale).astype(dt)

        w = [rnd(d, d, scale=d**-0.5), 1 + rnd(d, scale=0.1), rnd(d, scale=0.1), rnd(d, d, scale=d**-0.5),
             rnd(b, h, a.text, 64), rnd(b, h, a.text, 64), rnd(d, d, scale=d**-0.5), 1 + rnd(d, scale=0.1),
             rnd(d, scale=0.1), rnd(f, d, scale=d**-0.5), rnd(d, f, scale=f**-0.5), 1 + rnd(d, scale=0.1),
             rnd(d, scale=0.1), rnd(3 * d, d, scale=d**-0.5)]  # fmt: skip
        cache = rnd(2, b, h, a.cached + 8, 64)
        x0, q0 = rnd(b, 1, d), rnd(b, h, 1, 64)
        consts = lk.layer_consts(1e-5, 0.125, 1)[0]
        mx.eval(w, cache, x0, q0, consts)
        w_abs = lk.absorbed_weights(w) if a.absorbed else w  # (used only with --absorbed)
        mx.eval(w_abs)
        nxt_cache = rnd(2, b, h, a.cached + 8, 64)  # the next layer's (written in place at `cached` - 1)
        first = a.shapes.split(",")[0]
        variants = [(sh, False, False) for sh in a.shapes.split(",")]
        variants += [(first, True, False)] if a.timing else []
        variants += [(first, t, True) for t in (False, True) if a.absorbed and (a.timing or not t)]
        for shape, timing, absorbed in variants:
            wl = w_abs if absorbed else w
            cross_kv = (lk.WEIGHT["cross_k"], lk.WEIGHT["cross_v"])  # read by the attention, not streamed
            nbytes = sum(t.nbytes for i, t in enumerate(wl) if i not in cross_kv)
            threads, per_sm = (int(v) for v in shape.split("x"))
            staged = lk.staged_bytes(b, f, dt)
            if per_sm * (staged + 2048) > 220 * 1024 or per_sm * threads > 1024:
                lines.append(f"| {d} | {shape} | – | – | – | skipped: {per_sm} blocks do not fit an SM |")
                continue
            lk.BLOCK, lk.BLOCKS_PER_SM, lk.TIMING = threads, per_sm, timing
            best, host = [], []
            for _ in range(a.repeats + 1):
                x, q = x0, q0
                scratch = []
                mx.synchronize()
                t0 = time.perf_counter()
                for _ in range(a.launches):
                    length = lk.step_length(a.cached, 1, cache.shape[3], a.text)
                    x, qn, _ = lk.decoder_layer(
                        x, q, cache, nxt_cache, length, consts, wl, a.text, True, absorbed
                    )
                    q = qn
                    if timing:
                        scratch.append(lk._LAST_SCRATCH[0])
                mx.async_eval(x, q)  # returns once every launch is encoded: the host's part
                t1 = time.perf_counter()
                mx.synchronize()
                best.append((time.perf_counter() - t0) / a.launches)
                host.append((t1 - t0) / a.launches)
            lk.check_barrier()
            i = min(range(1, len(best)), key=best.__getitem__)  # the first round compiles the kernel
            t = best[i]
            note = f"min of {a.repeats}; {a.launches} chained launches, {a.cached} cached"
            if absorbed:
                note += "; absorbed cross-attention"
            if timing:
                note += "; TIMING build"
                stages.append((f"{d}{' absorbed' if absorbed else ''}", stage_times(lk, mx, scratch)))
            lines.append(
                f"| {d} | {shape} | {t * 1e6:.1f} | {host[i] * 1e6:.1f} | {nbytes / t / 1e9:.0f} | {note} |"
            )
            print(lines[-1], flush=True)
    lk.BLOCK, lk.BLOCKS_PER_SM, lk.TIMING = None, 1, False
    text = "\n".join(["## Layer kernel probe", "", *lines, ""])
    for d, row in stages:
        text += f"\n### Width {d}: one launch, block 0's clock (us, medians)\n\n{row}\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
