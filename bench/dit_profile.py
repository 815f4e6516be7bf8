"""Where a Stable Audio DiT call's GPU time goes, kernel by kernel (Nsight Compute).

    # every kernel of one compiled DiT call (CFG pair), timed by Nsight Compute, then summed by kind:
    ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \\
        --print-units base --log-file $OUT/ncu.csv python3 bench/dit_profile.py --model 1.0 --ncu
    python3 bench/dit_profile.py --parse $OUT/ncu.csv --out $OUT/kernels.md

`--ncu` warms the compiled DiT up, then brackets one call with cuProfilerStart / cuProfilerStop (the driver
API, so no other CUDA runtime is needed), so ncu times only that call's kernels: each kernel runs alone
under ncu, which is what a per-kernel breakdown wants (the sum is the GPU's busy time, not the wall time).
Kernels are summed by kind (GEMM, attention, layer norm, ...: `KINDS`, matched on the kernel's name) and
by name, with their launch shapes. Results: bench/results/2026-12-02-h200-r9/.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import re
from collections import defaultdict
from pathlib import Path

from common import Report, mx


def _model(name: str, dtype: str, tiny: bool):
    import stable_audio as sa

    m = sa.build_ours(name, dtype, tiny)
    return m, sa.dit_call(m, sa.SETTINGS[name])


def ncu_target(name: str, dtype: str, tiny: bool) -> None:
    """One compiled DiT call between cuProfilerStart and cuProfilerStop, after three warm-up calls."""
    m, call = _model(name, dtype, tiny)
    m.dit.compiled = True
    for _ in range(3):
        mx.eval(call())
    mx.synchronize()
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuProfilerStart() == 0, "cuProfilerStart failed"
    mx.eval(call())
    mx.synchronize()
    assert cuda.cuProfilerStop() == 0, "cuProfilerStop failed"
    print(f"profiled one DiT call of {name}")


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
    p.add_argument("--out")
    a = p.parse_args()
    if a.ncu:
        ncu_target(a.model, a.dtype, a.tiny)
        return
    what = Path(a.parse).name if a.parse else a.model
    rep = Report(f"Stable Audio DiT, one call's kernels ({what})", a.out)
    if a.parse:
        parse(Path(a.parse), rep)


if __name__ == "__main__":
    main()
