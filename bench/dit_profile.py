"""Where a Stable Audio DiT call's GPU time goes, kernel by kernel (Nsight Compute).

    # every kernel of one compiled DiT call (CFG pair), timed by Nsight Compute, then summed by kind:
    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \\
        --print-units base --log-file $OUT/ncu.csv python3 bench/dit_profile.py --model 1.0 --ncu
    python3 bench/dit_profile.py --parse $OUT/ncu.csv --out $OUT/kernels.md

    # in one process: the host's encoding of a call, calls pipelined as the samplers run them, and the GPU's
    # timeline of such calls (CUPTI through torch.profiler, where torch is installed): busy time and gaps
    python3 bench/dit_profile.py --model 1.0 --host --out $OUT/host.md

`--ncu` warms the compiled DiT up, then brackets one call with cuProfilerStart / cuProfilerStop (the driver
API, so no other CUDA runtime is needed), so ncu times only that call's kernels: each kernel runs alone
under ncu, which is what a per-kernel breakdown wants (the sum is the GPU's busy time, not the wall time).
Kernels are summed by kind (GEMM, attention, layer norm, ...: `KINDS`, matched on the kernel's name) and
by name, with their launch shapes. Results: bench/results/2026-12-02-h200-r9/.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import Report, apply_sets, mx


def _model(name: str, dtype: str, tiny: bool):
    import stable_audio as sa

    m = sa.build_ours(name, dtype, tiny)
    return m, sa.dit_call(m, sa.SETTINGS[name])


def profiled(run) -> None:
    """run() between cuProfilerStart and cuProfilerStop (the driver API: no CUDA runtime of our own), after
    the GPU has gone idle, and synchronised before the stop: what ncu's --profile-from-start off times."""
    mx.synchronize()
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuProfilerStart() == 0, "cuProfilerStart failed"
    run()
    mx.synchronize()
    assert cuda.cuProfilerStop() == 0, "cuProfilerStop failed"


def ncu_target(name: str, dtype: str, tiny: bool) -> None:
    """One compiled DiT call between cuProfilerStart and cuProfilerStop, after three warm-up calls."""
    m, call = _model(name, dtype, tiny)
    m.dit.compiled = True
    for _ in range(3):
        mx.eval(call())
    profiled(lambda: mx.eval(call()))
    print(f"profiled one DiT call of {name}")


def _ms(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def pipelined(call, n: int, during=None) -> float:
    """ms a call with each call scheduled before the previous one is waited for (the samplers' loop);
    `during`, a context manager entered once the loop runs (the GPU busy), brackets n of the calls."""
    prev = call()
    mx.async_eval(prev)
    for _ in range(2):  # into the steady state: the host a call ahead of the GPU
        y = call()
        mx.async_eval(y)
        mx.eval(prev)
        prev = y
    with during if during is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        for _ in range(n):
            y = call()
            mx.async_eval(y)
            mx.eval(prev)
            prev = y
        mx.eval(prev)
        dt = time.perf_counter() - t0
    return 1000 * dt / n


def timeline(call, n: int) -> list[dict] | None:
    """The GPU's kernels (name, start and duration in µs) during n pipelined calls in the steady state, by
    CUPTI (torch.profiler's CUDA activity, which records every kernel of the process, CUDA graphs'
    included); None without torch on CUDA. The window opens with the GPU busy on the call before them."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.cuda.init()
    prof = profile(activities=[ProfilerActivity.CUDA])
    pipelined(call, n, during=prof)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    ks = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    return sorted(({"name": e["name"], "ts": float(e["ts"]), "dur": float(e["dur"])} for e in ks),
                  key=lambda k: k["ts"])  # fmt: skip


def timeline_rows(ks: list[dict], pace_ms: float) -> tuple[list[list], list[list]]:
    """(summary rows, per-kind rows) of a steady-state kernel timeline, per call: each total over the
    timeline's span, times the calls' pace (ms a call): the span starts inside the call before the timed ones,
    so counting whole calls in it would be off by that part. Busy time (overlaps counted once), idle gaps
    between kernels by size."""
    busy, gaps, end = 0.0, [], None
    for k in ks:
        if end is not None and k["ts"] > end:
            gaps.append(k["ts"] - end)
        start = k["ts"] if end is None else max(k["ts"], end)
        busy += max(0.0, k["ts"] + k["dur"] - start)
        end = k["ts"] + k["dur"] if end is None else max(end, k["ts"] + k["dur"])
    span = end - ks[0]["ts"]
    per = span / pace_ms  # µs of the timeline -> ms a call
    big = [g for g in gaps if g >= 10]
    summary = [
        ["kernels a call", len(ks) * pace_ms / span * 1000],
        ["kernels running (ms a call)", busy / per],
        ["idle between kernels (ms a call)", sum(gaps) / per],
        ["  gaps < 2 µs (ms)", sum(g for g in gaps if g < 2) / per],
        ["  gaps 2-10 µs (ms)", sum(g for g in gaps if 2 <= g < 10) / per],
        ["  gaps >= 10 µs (ms; count, largest µs)",
         f"{sum(big) / per:.3f}; {len(big) * pace_ms / span * 1000:.1f}, {max(big, default=0):.0f}"],
    ]  # fmt: skip
    by_kind: dict[str, list[float]] = defaultdict(list)
    for k in ks:
        by_kind[kind_of(k["name"])].append(k["dur"])
    kinds = [[kd, len(v) * pace_ms / span * 1000, sum(v) / per, sum(v) / len(v)] for kd, v in by_kind.items()]
    return summary, sorted(kinds, key=lambda r: -r[2])


def host_report(name: str, dtype: str, tiny: bool, rep: Report, calls: int = 20) -> None:
    """The host's encoding time of one compiled DiT call against the calls' pace and the GPU's timeline."""
    m, call = _model(name, dtype, tiny)
    m.dit.compiled = True
    for _ in range(3):
        mx.eval(call())

    def encode():
        y = call()
        mx.async_eval(y)
        return y

    enc = []
    for _ in range(10):
        mx.synchronize()
        t0 = time.perf_counter()
        y = encode()
        enc.append(1000 * (time.perf_counter() - t0))
        mx.eval(y)
    synced = _ms(lambda: mx.eval(call()), 10)
    pace = pipelined(call, calls)
    rows = [
        ["host: build and enqueue one call (ms, median)", statistics.median(enc)],
        ["one call, waited for (ms, median)", statistics.median(synced)],
        ["one call, pipelined as the samplers run (ms)", pace],
    ]
    ks = timeline(call, 5)
    if ks:
        summary, kinds = timeline_rows(ks, pace)
        rows += summary
        note = "Compiled DiT, batch 1. Timeline: 5 pipelined calls (CUPTI), per call at their pace."
        rep.table(["DiT call (CFG pair where cfg != 1)", "value"], rows, note=note)
        note = "Kernels as they ran in the pipelined calls (caches warm), by kind."
        rep.table(["kind", "kernels a call", "ms a call", "µs each"], kinds, note=note)
    else:
        note = "No CUPTI timeline here (it needs torch with CUDA)."
        rep.table(["DiT call (CFG pair where cfg != 1)", "value"], rows, note=note)


KINDS = [  # (kind, pattern on the kernel's name), first match wins
    ("attention (ours)", r"attention_kernel|attn_kernel|mag_attention"),
    ("attention (cuDNN)", r"cudnn|fmha|flash|sdpa|attention"),
    ("GEMM", r"gemm|xmma|cutlass|sm90_|sm80_|cublas|gemv"),
    ("layer norm", r"layer_norm|layernorm"),
    ("rope (q / k)", r"rope"),
    ("GLU gate", r"glu"),
    ("copy", r"copy"),
    ("compiled (fused elementwise)", r"Compiled|compiled|Sigmoid|Multiply|Add"),
]


def kind_of(kernel: str) -> str:
    for kind, pat in KINDS:
        if re.search(pat, kernel, re.I):
            return kind
    return "other"


US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def read_ncu(path: Path) -> list[dict]:
    """(name, grid, block, us) of each profiled kernel, in launch order, from ncu's --csv log."""
    lines = Path(path).read_text(errors="replace").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith('"ID"'))
    rows = []
    for r in csv.DictReader(lines[start:]):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        us = float(r["Metric Value"].replace(",", "")) * US[r.get("Metric Unit") or "nsecond"]
        rows.append(dict(name=r["Kernel Name"], grid=r.get("Grid Size"), block=r.get("Block Size"), us=us))
    return rows


def parse(path: Path, rep: Report) -> None:
    rows = read_ncu(path)
    total = sum(r["us"] for r in rows)
    by_kind: dict[str, list[float]] = defaultdict(list)
    by_name: dict[str, list[float]] = defaultdict(list)
    grids: dict[str, str] = {}
    for r in rows:
        by_kind[kind_of(r["name"])].append(r["us"])
        short = r["name"][:110]
        by_name[short].append(r["us"])
        grids[short] = f"{r['grid']} x {r['block']}"
    kinds = sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))
    rep.table(
        ["kind", "kernels", "us", "share"],
        [[k, len(v), sum(v), f"{100 * sum(v) / total:.1f}%"] for k, v in kinds]
        + [["all", len(rows), total, "100%"]],
    )
    names = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    rep.table(
        ["kernel", "grid x block", "calls", "us total", "us each"],
        [[n, grids[n], len(v), sum(v), sum(v) / len(v)] for n, v in names],
        note="Each kernel timed alone by Nsight Compute (gpu__time_duration), one compiled DiT call.",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="1.0", choices=["small", "1.0"])
    p.add_argument("--dtype", default="float16")
    p.add_argument("--tiny", action="store_true", help="tiny model: a smoke test of the script")
    p.add_argument("--ncu", action="store_true", help="run one DiT call for ncu to profile")
    p.add_argument("--parse", help="an ncu --csv log to sum")
    p.add_argument("--host", action="store_true", help="host time, pipelined pace and the GPU's timeline")
    p.add_argument("--out")
    p.add_argument("--set", action="append", default=[], help="module.NAME=value (a knob, see common)")
    a = p.parse_args()
    apply_sets("mlx_audio_generate", a.set)
    if a.ncu:
        ncu_target(a.model, a.dtype, a.tiny)
        return
    what = Path(a.parse).name if a.parse else a.model
    rep = Report(f"Stable Audio DiT, one call's kernels ({what})", a.out)
    if a.parse:
        parse(Path(a.parse), rep)
    if a.host:
        host_report(a.model, a.dtype, a.tiny, rep)


if __name__ == "__main__":
    main()
