"""Where a MusicGen decode step spends its time (ours only, LM alone, real sizes, random weights).

    python bench/decode_profile.py --models small,large --steps 150 --dtype float16 --out prof.md
    MLX_MAX_OPS_PER_BUFFER=100 python bench/decode_profile.py ...   # the CUDA graph batch size

For each model and step mode it times `--steps` decode steps (CFG batch 2, top-k 250) after warm-up through
the library's `generate_steps` (steps/s, async pipelined as in real use), then the same steps in a manual
loop that splits one step into: building the lazy graph in Python ("build"), `mx.async_eval` returning
("submit": MLX encodes the kernels on this thread), and waiting for the result ("wait"). When build +
submit is about the whole step the loop is CPU-bound (launch overhead), and the GPU idles.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import Report, count_ops, log, mx, mx_dtype, parse_list, time_steps
from musicgen import decoder_config

from mlx_audio_generate.musicgen.lm_generate import SamplingOptions, generate_steps
from mlx_audio_generate.musicgen.model import DecoderConfig, MusicgenLM, cross_attention_mask
from mlx_audio_generate.sampling import sample_tokens


def build_lm(name: str, dtype: str, tiny: bool) -> MusicgenLM:
    lm = MusicgenLM(DecoderConfig.from_dict(decoder_config(name, tiny)), 768)
    lm.set_dtype(mx_dtype(dtype))
    mx.eval(lm.parameters())
    return lm


def text(batch: int = 1, tokens: int = 12) -> tuple[mx.array, mx.array]:
    rng = np.random.default_rng(0)
    return mx.array(rng.standard_normal((batch, tokens, 768)).astype(np.float32)), mx.ones((batch, tokens))


def set_mode(lm: MusicgenLM, mode: str) -> bool:
    """mode: [compiled-](gemm|matvec|matvec-unfused|matvec-ops|matvec-kernels); returns generate_steps'
    `compiled`. matvec = the GPU default (GEMV, compiled layer parts, fused CUDA kernels when the decoder's
    auto rule says so); -kernels / -ops: the compiled parts with / without the fused kernels; -unfused: no
    compiled parts either."""
    lm.decoder.matvec = "matvec" in mode
    lm.decoder.fused = not mode.endswith("unfused")
    lm.decoder.kernels = None if mode == "matvec" else mode.endswith("kernels")
    return mode.startswith("compiled")


def steps_per_s(lm: MusicgenLM, steps: int, mode: str, warm: int = 10) -> float:
    states, mask = text()
    compiled = set_mode(lm, mode)
    gen = generate_steps(lm, states, mask, steps + warm + 4, SamplingOptions(), key=0, compiled=compiled)
    return time_steps(gen, steps, warm)


def make_step(lm: MusicgenLM, steps: int):
    """A pipelined decode step like generate_steps' (CFG batch 2, top-k 250) and its first input column."""
    states, mask = text()
    dec = lm.decoder
    s, m = lm.project_text(states, mask, True)
    kv = dec.precompute_cross_kv(s.astype(dec.layer_norm.weight.dtype))
    cmask = cross_attention_mask(m)
    cache = dec.make_cache(2, steps)
    mx.eval(kv, [c.state for c in cache])
    key = mx.random.key(0)

    def step(col: mx.array, off: int) -> mx.array:
        logits = dec(mx.concatenate([col, col]), kv, cmask, cache, off, last_only=True)
        logits = logits[:, :, -1].astype(mx.float32)
        logits = logits[1:] + (logits[:1] - logits[1:]) * 3.0
        return sample_tokens(logits, key, 1.0, 250, None)[:, :, None]

    return step, mx.full((1, 4, 1), 2048, dtype=mx.int32)


def breakdown(lm: MusicgenLM, steps: int, mode: str, warm: int = 10) -> dict[str, float]:
    """One step split into build / submit, pipelined like generate_steps (ms per step)."""
    set_mode(lm, mode)
    step, col = make_step(lm, steps + warm + 8)
    build = submit = 0.0
    y = step(col, 0)
    mx.async_eval(y)
    t_start = time.perf_counter()
    for t in range(1, steps + warm):
        if t == warm:
            mx.eval(y)
            build = submit = 0.0
            t_start = time.perf_counter()
        a = time.perf_counter()
        y_next = step(y, t)
        b = time.perf_counter()
        mx.async_eval(y_next)
        c = time.perf_counter()
        build += b - a
        submit += c - b
        y = y_next
    mx.eval(y)
    total = time.perf_counter() - t_start
    return dict(build=1e3 * build / steps, submit=1e3 * submit / steps, total=1e3 * total / steps)


def step_ops(lm: MusicgenLM, mode: str) -> tuple[int, int]:
    """Primitives of one decode step's graph (all, non-view); a compiled half counts as one."""
    set_mode(lm, mode)
    step, col = make_step(lm, 8)
    y = step(col, 0)
    mx.eval(y)
    return count_ops(step(y, 1))[:2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="small,large")
    p.add_argument("--modes", default="gemm,matvec")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--ops", action="store_true", help="count the primitives of one step per mode")
    p.add_argument("--micro", action="store_true", help="time one product as GEMM / addmm / GEMV")
    p.add_argument("--out")
    a = p.parse_args()
    rep = Report("MusicGen decode step profile", a.out)
    rows, brk = [], []
    for name in parse_list(a.models):
        lm = build_lm(name, a.dtype, a.tiny)
        steps_per_s(lm, a.steps, parse_list(a.modes)[0])  # warm-up: the first timing of a process runs slow
        for mode in parse_list(a.modes):
            sps = steps_per_s(lm, a.steps, mode)
            log(f"{name} {mode}: {sps:.1f} steps/s")
            rows.append([name, mode, f"{sps:.1f}", f"{1e3 / sps:.2f}"])
        for mode in parse_list(a.modes):
            if mode.startswith("compiled"):
                continue
            d = breakdown(lm, a.steps, mode)
            log(f"{name} {mode} breakdown: {d}")
            brk.append([name, mode, *(f"{d[k]:.2f}" for k in ("build", "submit", "total"))])
            if a.ops:
                log(f"{name} {mode} ops (all, non-view): {step_ops(lm, mode)}")
    rep.table(["model", "step mode", "steps/s", "ms/step"], rows)
    rep.table(["model", "mode", "build (ms)", "submit (ms)", "step (ms)"], brk, note="eager step, pipelined")
    if a.micro:
        micro(rep, a.dtype)


def micro(rep: Report, dtype: str, reps: int = 200) -> None:
    """Host + device time of one (2, D) x (D, N) product as cuBLAS GEMM, addmm and batched GEMV."""
    rows = []
    dt = mx_dtype(dtype)
    shapes = [(1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024), (2048, 6144), (2048, 8192)]
    for d, n in shapes:
        w = mx.random.normal((n, d)).astype(dt) * 0.02
        xs = [mx.random.normal((2, 1, d)).astype(dt) for _ in range(reps)]
        res = [mx.random.normal((2, 1, n)).astype(dt) for _ in range(reps)]
        mx.eval(w, xs, res)
        ops = {
            "gemm x@W.T": lambda x, r, w: x @ w.T,
            "addmm": lambda x, r, w: mx.addmm(r, x, w.T),
            "gemv W@x": lambda x, r, w: (w @ x.reshape(2, -1, 1)).reshape(2, 1, -1),
            "gemv + add": lambda x, r, w: r + (w @ x.reshape(2, -1, 1)).reshape(2, 1, -1),
        }
        row = [f"{d}x{n}"]
        for f in ops.values():
            for _ in range(2):
                outs = [f(xs[i], res[i], w) for i in range(reps)]
                mx.synchronize()
                t0 = time.perf_counter()
                mx.async_eval(outs)
                t1 = time.perf_counter()
                mx.eval(outs)
                t2 = time.perf_counter()
            row.append(f"{1e6 * (t1 - t0) / reps:.1f} / {1e6 * (t2 - t0) / reps:.1f}")
        rows.append(row)
    rep.table(["D x N", *ops], rows, note="us per product: host submit / submit + device (200 independent)")


if __name__ == "__main__":
    main()
