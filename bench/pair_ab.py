"""A CFG pair's exact shortcuts against the whole pair: the guided DiT call of Stable Audio Open 1.0 and
Stable Audio 3 small / medium at real sizes (random weights), one process, the same weights and inputs,
alternating rounds.

    python bench/pair_ab.py --models sa-1.0,sa3-small,sa3-medium --b null --out null_half.md
    python bench/pair_ab.py --models sa-1.0,sa3-small,sa3-medium --b share --out share_first.md
    python bench/pair_ab.py --tiny          # a smoke test of the script (CPU)

A is the library's default. B turns one shortcut off (`--b`):
- `null`: the null half's cross-attention. Without a negative prompt a CFG pair's unconditional rows attend
  to the null context (zero tokens) and add exactly 0 (tests/test_dit.py, tests/stable_audio_3/
  test_sa3_dit.py), so both DiTs skip them (`null_uncond`); B sets `null_uncond = False`.
- `share`: the first block's self-attention once for both halves, which are equal until the first
  cross-attention (`share_first`); B sets `share_first = False`.
- `both`: both off (the reference's whole pair).
- `gemm`: not a shortcut of the pair: B takes cuBLAS for every product (`gemm_kernel.ENABLED = False`),
  where A takes our GEMM kernel for calls of few rows.
Each round times `--calls` guided calls as the samplers run them (each scheduled before the previous one is
waited for), after a warm-up, compiled as on the GPU by default; the median round is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from common import Report, device_line, log, mx, mx_dtype, parse_list
from dit_profile import pipelined

B_SIDES = {
    "null": "null half's cross-attention",
    "share": "first self-attention shared",
    "both": "both",
    "gemm": "gemm_kernel",
}
SA3_SECONDS = {"small": 30.0, "medium": 120.0}  # a clip length of each model's range


def sa_calls(name: str, dtype: str, tiny: bool, b_side: str, seconds: float = 0.0):
    """(label, A call, B call, DiT) of Stable Audio Open's guided DiT at cfg 7 (1.0's model card)."""
    import stable_audio as sa

    m = sa.build_ours(name, dtype, tiny)
    st = sa.SETTINGS[name]
    x, t, cond = sa.guided_inputs(m, 7.0)
    label = f"Stable Audio Open {name}, {m.latent_frames} latents, cfg 7 ({st['steps']} steps a clip)"
    return (label, *sides(m.dit, cond, b_side, lambda c: m.dit.guided(x, t, c, 7.0)), m.dit)


def sa3_calls(name: str, dtype: str, tiny: bool, b_side: str, seconds: float):
    """(label, A call, B call, DiT) of Stable Audio 3's guided DiT at cfg 7 + APG (-base use)."""
    from sa3_peer import latents_for, sa3_config

    from mlx_audio_generate.stable_audio_3.dit import SA3DiT, SA3DiTConfig

    cfg = SA3DiTConfig.from_dict(sa3_config(name, tiny))
    dit = SA3DiT(cfg)
    dit.set_dtype(mx_dtype(dtype))
    mx.eval(dit.parameters())
    frames = latents_for(seconds if not tiny else 2.0)
    cross = mx.random.normal((1, 256 if not tiny else 8, cfg.cond_token_dim))
    glob = mx.random.normal((1, cfg.global_cond_dim)) if cfg.global_cond_dim else None
    cond = dit.cfg_condition(cross, glob, 7.0)
    x = mx.random.normal((1, cfg.io_channels, frames)).astype(dit.dtype)
    t = mx.full((1,), 0.5)
    mx.eval([a for kv in cond.kv for a in kv], x, t)
    label = f"Stable Audio 3 {name}, {frames} latents, cfg 7 + APG"
    return (label, *sides(dit, cond, b_side, lambda c: dit.guided(x, t, c, 7.0)), dit)


def sides(dit, cond, b_side: str, guided):
    """(A, B) calls: A the default, B with the shortcut(s) `b_side` names turned off."""
    from mlx_audio_generate import gemm_kernel

    b_cond = dataclasses.replace(cond, null_uncond=False) if b_side in ("null", "both") else cond
    b_share = b_side not in ("share", "both")
    b_gemm = b_side != "gemm"

    traces = {}

    def kernels(on: bool) -> None:
        # The compiled calls traced one setting (the switch is read while tracing): each setting keeps its
        # own traces, so switching back does not trace again.
        if gemm_kernel.ENABLED != on:
            traces[gemm_kernel.ENABLED] = dit._jit.fns
            gemm_kernel.ENABLED = on
            dit._jit.fns = traces.get(on, {})

    def a_call():
        dit.share_first = True
        kernels(True)
        return guided(cond)

    def b_call():
        dit.share_first = b_share
        kernels(b_gemm)
        return guided(b_cond)

    return a_call, b_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sa-1.0,sa3-small,sa3-medium")
    p.add_argument("--b", choices=B_SIDES, default="null", help="the shortcut B turns off (see above)")
    p.add_argument(
        "--sa3-seconds", default="", help="SA3 clip lengths, e.g. small=10 (default small=30, medium=120)"
    )
    p.add_argument("--dtype", default="float16")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eager", action="store_true", help="eager calls (the default compiles, as on the GPU)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    what = B_SIDES[a.b]
    tiny = ", TINY models" if a.tiny else ""
    rep = Report(f"A CFG pair's shortcuts, B without: {what} ({a.dtype}{tiny})", a.out)
    rows = []
    for model in parse_list(a.models):
        family, _, name = model.partition("-")
        make = {"sa": sa_calls, "sa3": sa3_calls}[family]
        given = (item.split("=") for item in parse_list(a.sa3_seconds))
        seconds = dict(SA3_SECONDS, **{k: float(v) for k, v in given})
        label, skip, full, dit = make(name, a.dtype, a.tiny, a.b, seconds.get(name, 0.0))
        dit.compiled = not a.eager
        for call in (skip, full):  # warm-up: both compiled before the clock
            mx.eval(call())
        diff = mx.abs(skip().astype(mx.float32) - full().astype(mx.float32)).max().item()
        times: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(a.rounds):
            times["A"].append(pipelined(skip, a.calls))
            times["B"].append(pipelined(full, a.calls))
        ta, tb = statistics.median(times["A"]), statistics.median(times["B"])
        log(f"{label}: A {times['A']} B {times['B']} max |A - B| {diff:.2e}")
        rows.append([label, ta, tb, f"{tb / ta:.3f}", f"{diff:.1e}"])
        del dit, skip, full
    rep.table(
        ["guided DiT call", "A: default (ms)", f"B: without ({what}) (ms)", "B / A", "max |A - B|"],
        rows,
        note=f"{device_line()}. One process, the same weights and inputs, {a.rounds} alternating rounds of "
        f"{a.calls} pipelined calls, median; {'eager' if a.eager else 'compiled'}.",
    )


if __name__ == "__main__":
    main()
