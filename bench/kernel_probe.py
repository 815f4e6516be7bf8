"""Probe of the MusicGen decode kernels and the MLX-CUDA host knobs (issue 19), one run, one markdown table.

    PYTHONPATH=/tmp/site:$PWD python3 bench/kernel_probe.py --out $OUT/probe.md      # on the GPU, < 4 min
    python bench/kernel_probe.py --dry-run --out /tmp/probe.md                       # CPU: the plumbing only

Every case runs in a child process (its own MLX, its own env vars, a timeout), so a failing or hanging case
is one FAILED row, never the end of the run; cases past the time budget are listed as skipped.

1. `kernels` (one child): for musicgen-small / medium / large shapes (rows B = 2: one prompt with CFG, and 8)
   each fused product (LN + QKV split into q / k / v, LN + fc1 + GELU, out + residual, fc2 + residual) against
   the MLX ops it replaces (max abs error, fp16), then timed: the MLX ops, the first kernels
   (bench/decode_kernels_v1.py), the new kernels with their default launch shape and a sweep of launch shapes
   (WPR warps per weight row, RPW rows per warp). Time = wall per call of 100 independent calls rotating over
   4 weight copies (so the weights come from HBM, not L2) submitted at once; "host" is the submit part. When
   wall ~ host the product is host-bound and wall says nothing about the GPU.
2. `step` (one child per model and env): a whole decode step (real sizes, random fp16 weights, CFG batch 2,
   top-k 250, library `generate_steps`), steps/s in alternating rounds for: `base` (the code before round 3:
   the first kernels up to 1024 wide, strided cross K/V), `off` / `v1` / `new` (kernels off / first / new,
   with contiguous cross K/V), `layer` (each layer as one kernel: musicgen/layer_kernel.py); plus the max
   abs error of one step's
   logits against `off` and the primitives of one step. Envs: the default,
   MLX_USE_CUDA_GRAPHS=0 (direct launches instead of CUDA graph nodes), larger graphs
   (MLX_MAX_OPS_PER_BUFFER=1000, MLX_MAX_MB_PER_BUFFER=10000).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODELS = {"small": (1024, 4096), "medium": (1536, 6144), "large": (2048, 8192)}  # (D, FFN): musicgen configs
ENVS = {
    "default": {},
    "no-graphs": {"MLX_USE_CUDA_GRAPHS": "0"},
    "big-graphs": {"MLX_MAX_OPS_PER_BUFFER": "1000", "MLX_MAX_MB_PER_BUFFER": "10000"},
}
HEADER = ["case", "variant", "status", "max abs err", "value", "unit", "note"]


# ------------------------------------------------------------------------------------------- parent side


def plan(a: argparse.Namespace) -> list[dict]:
    """The child runs in priority order (later ones are the first skipped when the budget runs out)."""
    runs = [dict(kind="kernels", label="kernels", env={}, timeout=a.kernel_timeout)] if a.models else []
    models = [m for m in a.step_models.split(",") if m]
    for env in [e for e in a.envs.split(",") if e]:
        for m in models:
            modes = a.modes if env == "default" else a.env_modes
            runs.append(dict(kind="step", label=f"step {m} [{env}]", env=ENVS[env], model=m, modes=modes,
                             env_name=env, timeout=a.step_timeout))  # fmt: skip
    return runs


def child_cmd(a: argparse.Namespace, run: dict, out: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", run["kind"], "--json", str(out)]
    cmd += ["--rows", a.rows, "--models", a.models, "--steps", str(a.steps), "--rounds", str(a.rounds)]
    cmd += ["--warm", str(a.warm)]
    if run["kind"] == "step":
        cmd += ["--models", run["model"], "--modes", run["modes"], "--env-name", run["env_name"]]
    if a.dry_run:
        cmd.append("--dry-run")
    if a.no_sweep:
        cmd.append("--no-sweep")
    return cmd


def run_children(a: argparse.Namespace) -> list[list]:
    import tempfile

    rows: list[list] = []
    deadline = time.monotonic() + a.budget
    tmp = Path(tempfile.mkdtemp(prefix="kernel_probe_"))
    for i, run in enumerate(plan(a)):
        left = deadline - time.monotonic()
        if left < 10:
            rows.append([run["label"], "–", "skipped: time budget", None, None, "", ""])
            continue
        out = tmp / f"child{i}.json"
        env = {**os.environ, **run["env"]}
        t0 = time.monotonic()
        try:
            p = subprocess.run(child_cmd(a, run, out), env=env, capture_output=True, text=True,
                               timeout=min(run["timeout"], left))  # fmt: skip
            status = None if p.returncode == 0 else f"FAILED: exit {p.returncode}: {last_line(p.stderr)}"
            if p.returncode != 0:
                sys.stderr.write(p.stderr[-4000:])
        except subprocess.TimeoutExpired:
            status = f"FAILED: timed out after {time.monotonic() - t0:.0f} s"
        got = json.loads(out.read_text()) if out.exists() else []
        rows += got
        if status is not None:
            rows.append([run["label"], "–", status, None, None, "", f"{len(got)} rows before it"])
        log(f"{run['label']}: {len(got)} rows in {time.monotonic() - t0:.1f} s ({status or 'ok'})")
    return rows


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:160] if lines else "(no output)"


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.2e}" if abs(v) < 1e-2 else f"{v:.3f}"
    return str(v).replace("|", "/")


def table(rows: list[list]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def log(*x) -> None:
    print(*x, file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- child side


class Rows:
    """Rows of a child, rewritten to its JSON file after each one (a crash keeps what came before)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.rows: list[list] = []
        self.path.write_text("[]")

    def add(self, *row) -> None:
        self.rows.append(list(row))
        self.path.write_text(json.dumps(self.rows))
        log("  ", " | ".join(fmt(c) for c in row))

    def guard(self, case: str, variant: str, fn) -> None:
        """Run fn() (which adds its own rows); an exception becomes a FAILED row of this case."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a probe reports every failure and goes on
            traceback.print_exc()
            self.add(case, variant, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:140]}", None,
                     None, "", "")  # fmt: skip


def on_cuda(mx) -> bool:
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def time_calls(mx, fn, arg_sets: list, reps: int) -> tuple[float, float]:
    """(host submit, wall) in us per call of `reps` independent calls of fn, submitted together."""
    mx.eval(fn(*arg_sets[0]))
    mx.synchronize()
    best = (float("inf"), float("inf"))
    for _ in range(3):
        t0 = time.perf_counter()
        outs = [fn(*arg_sets[i % len(arg_sets)]) for i in range(reps)]
        mx.async_eval(outs)
        t1 = time.perf_counter()
        mx.eval(outs)
        mx.synchronize()
        t2 = time.perf_counter()
        if t2 - t0 < best[1] * 1e-6 * reps:
            best = (1e6 * (t1 - t0) / reps, 1e6 * (t2 - t0) / reps)
    return best


def kernel_child(a: argparse.Namespace, rows: Rows) -> None:
    import mlx.core as mx

    sys.path.insert(0, str(HERE))
    import decode_kernels_v1 as v1

    from mlx_audio_generate.musicgen import decode_kernels as dk

    cuda = on_cuda(mx)
    dt = mx.float16 if cuda else mx.float32
    reps = 100 if cuda else 2
    copies = 4 if cuda else 1
    if not cuda:
        rows.add("kernels", "–", "skipped: no CUDA device (dry run: reference ops only)", None, None, "", "")
    models = [m for m in a.models.split(",") if m]
    for b in [int(r) for r in a.rows.split(",") if r]:  # every model at B = 2 first (a timeout keeps those)
        for m in models:
            d, ffn = MODELS[m]
            if a.dry_run:
                d, ffn = d // 16, ffn // 16
            for prod in ("qkv", "fc1", "out", "fc2"):
                case = f"{m} {prod} B={b}"
                run = functools.partial(probe_product, a, mx, dk, v1, rows, case, prod, b, d, ffn, dt, reps,
                                        copies, cuda)  # fmt: skip
                rows.guard(case, "setup", run)
                mx.clear_cache()


def probe_product(a, mx, dk, v1, rows, case, prod, b, d, ffn, dt, reps, copies, cuda) -> None:
    din, n = {"qkv": (d, 3 * d), "fc1": (d, ffn), "out": (d, d), "fc2": (ffn, d)}[prod]
    ln, gelu, qkv = prod in ("qkv", "fc1"), prod == "fc1", prod == "qkv"
    keys = mx.random.split(mx.random.key(0), 4 + copies)
    x = (mx.random.normal((b, 1, din), key=keys[0]) * 2 + 0.5).astype(dt)
    g = (1 + 0.1 * mx.random.normal((din,), key=keys[1])).astype(dt)
    beta = (0.1 * mx.random.normal((din,), key=keys[2])).astype(dt)
    res = mx.random.normal((b, 1, n), key=keys[3]).astype(dt)
    ws = [(mx.random.normal((n, din), key=k) * din**-0.5).astype(dt) for k in keys[4:]]
    mx.eval(x, g, beta, res, ws)
    gb = n * din * ws[0].itemsize / 1e9

    if ln:

        def ref(w):
            return dk.reference_ln_matvec(x, g, beta, 1e-5, w, gelu)

        def new(w):
            if qkv:  # q (B, H, 1, Dh), kv (2, B, H, 1, Dh)
                return dk.ln_qkv(x, g, beta, 1e-5, w, max(1, din // 64))
            return dk.ln_matvec(x, g, beta, 1e-5, w, gelu)

        def old(w):
            return v1.ln_matvec(x, g, beta, 1e-5, w, gelu)

        old_ok = b * din <= v1.MAX_LN_ELEMENTS
    else:

        def ref(w):
            return dk.reference_matvec_add(x, w, res)

        def new(w):
            return dk.matvec_add(x, w, res)

        def old(w):
            return v1.matvec_add(x, w, res)

        old_ok = True

    def as_rows(y):  # the kernel's q, kv back to the (B, 1, 3D) of the ops
        if isinstance(y, tuple):
            q, kv = y
            return mx.concatenate([q.reshape(b, 1, -1), kv[0].reshape(b, 1, -1), kv[1].reshape(b, 1, -1)], -1)
        return y

    def err(f) -> float:
        e = mx.abs(as_rows(f(ws[0])).astype(mx.float32) - ref(ws[0]).astype(mx.float32)).max()
        return float(e.item())

    def timed(variant, f, note=""):
        host, wall = time_calls(mx, f, [[w] for w in ws], reps)
        rows.add(case, variant, "ok", err(f) if variant != "MLX ops" else None, wall, "us/call",
                 f"host {host:.1f} us; {gb / (wall * 1e-6):.0f} GB/s {note}".strip())  # fmt: skip

    rows.guard(case, "MLX ops", lambda: timed("MLX ops", ref))
    if not cuda:
        return
    if old_ok:
        rows.guard(case, "kernels v1", lambda: timed("kernels v1", old))
    wpr, rpw = dk.config(din, n)
    staged = "staged" if b * din * x.itemsize <= dk.MAX_STAGED_BYTES else "LN on the fly"
    rows.guard(case, "new default", lambda: timed(f"new default WPR={wpr} RPW={rpw}", new,
                                                  staged if ln else ""))  # fmt: skip
    if a.no_sweep:
        return
    # sweeps (each launch shape is one more JIT compile): every WPR at B = 2 (small, large), RPW = 2 at B >= 8
    full = b == 2 and case.split()[0] in ("small", "large")
    sweep = [(w, 1) for w in (1, 2, 4, 8) if full and din % (8 * w) == 0] + ([(wpr, 2)] if b >= 8 else [])
    for cw, cr in sweep:
        if (cw, cr) == (wpr, rpw):
            continue
        dk.OVERRIDE[(din, n)] = (cw, cr)
        try:
            rows.guard(case, f"WPR={cw} RPW={cr}", functools.partial(timed, f"sweep WPR={cw} RPW={cr}", new))
        finally:
            dk.OVERRIDE.pop((din, n), None)


def step_child(a: argparse.Namespace, rows: Rows) -> None:
    import mlx.core as mx

    sys.path.insert(0, str(HERE))
    import decode_kernels_v1 as v1
    from decode_profile import build_lm, text

    from mlx_audio_generate.musicgen import fused_decode, model
    from mlx_audio_generate.musicgen import lm_generate as gen
    from mlx_audio_generate.musicgen.model import cross_attention_mask

    cuda = on_cuda(mx)
    name = a.models.split(",")[0]
    lm = build_lm(name, "float16" if cuda else "float32", a.dry_run)
    dec = lm.decoder
    new_ops = (fused_decode.ln_matvec, fused_decode.matvec_add, fused_decode.supported)
    new_cross_kv = model.MusicgenDecoder.precompute_cross_kv
    keep = [fused_decode.decode_parts]

    def old_cross_kv(self, states):  # before round 3: the strided split views
        return [layer.encoder_attn.keys_values(states) for layer in self.layers]

    def set_mode(mode: str) -> None:
        kernels = {
            "off": False,
            "new": True,
            "v1": True,
            "base": dec.config.hidden_size <= 1024,
            "layer": None,
        }[mode]
        if mode in ("v1", "base"):  # the first kernels in the old layouts (supported() False: view ops)

            def ln_v1(x, g, b, eps, w, gelu=False, fused=True, out_shape=None):
                return v1.ln_matvec(x, g, b, eps, w, gelu, kernels)

            fused_decode.ln_matvec, fused_decode.matvec_add = ln_v1, v1.matvec_add
            fused_decode.supported = lambda x, w: False
        else:
            fused_decode.ln_matvec, fused_decode.matvec_add, fused_decode.supported = new_ops
        model.MusicgenDecoder.precompute_cross_kv = old_cross_kv if mode == "base" else new_cross_kv
        # fresh compiled parts, the old ones kept alive (MLX's compile cache is keyed by the function's id,
        # which a freed function's successor may reuse)
        keep.append(fused_decode.decode_parts)
        fused_decode.decode_parts = functools.cache(keep[0].__wrapped__)
        dec._fused = None
        dec.matvec, dec.fused, dec.kernels = True, True, kernels
        dec.layer_kernel = mode == "layer"  # each layer as one kernel (layer_kernel.py)

    def logits(mode: str):
        set_mode(mode)
        states, mask = text()
        s, m = lm.project_text(states, mask, True)
        kv = dec.precompute_cross_kv(s.astype(dec.layer_norm.weight.dtype))
        cache = dec.make_cache(2, 8)
        col = mx.full((2, 4, 1), 2048, dtype=mx.int32)
        dec(col, kv, cross_attention_mask(m), cache, 0, last_only=True)
        col = mx.array([[[5], [17], [300], [1999]]] * 2, dtype=mx.int32)
        return dec(col, kv, cross_attention_mask(m), cache, 1, last_only=True).astype(mx.float32)

    def check() -> None:
        ref = logits("off")
        for mode in ["new", "v1", "base"] + (["layer"] if "layer" in modes else []):
            e = float(mx.abs(logits(mode) - ref).max().item())
            scale = float(mx.abs(ref).max().item())
            rows.add(f"step {name} logits", f"{mode} vs off", "ok", e, scale, "max abs logit", a.env_name)

    def speed(mode: str) -> float:
        set_mode(mode)
        states, mask = text()
        g = gen.generate_steps(lm, states, mask, a.steps + a.warm + 4, gen.SamplingOptions(), key=0)
        from common import time_steps

        return time_steps(g, a.steps, a.warm)

    def primitives() -> (
        None
    ):  # one step's graph (decoder + CFG + top-k), views included, compiled parts inlined
        from common import count_ops
        from decode_profile import make_step

        for mode in modes:
            set_mode(mode)
            step, col = make_step(lm, 8)
            y = step(col, 0)
            mx.eval(y)
            total, kernels, _ = count_ops(step(y, 1))
            rows.add(f"step {name} primitives", mode, "ok", None, float(total), "primitives",
                     f"{kernels} not views; {a.env_name}")  # fmt: skip

    modes = [m for m in a.modes.split(",") if m]
    # The speeds first, kernel modes last (a crash in one, an abort no Python catches, keeps the rows before)
    got: dict[str, list[float]] = {m: [] for m in modes}

    def first_run(mode: str) -> None:  # warm-up (traces, JIT), its speed kept as a row at once
        sps = speed(mode)
        rows.add(f"step {name}", f"{mode} (first run)", "ok", None, sps, "steps/s", a.env_name)

    for mode in modes:
        rows.guard(f"step {name}", f"{mode} (first run)", functools.partial(first_run, mode))
    for _ in range(a.rounds):
        for mode in modes:
            try:
                got[mode].append(speed(mode))
            except Exception:  # noqa: BLE001 - reported below as a FAILED row
                traceback.print_exc()
    for mode in modes:
        v = got[mode]
        if not v:
            rows.add(f"step {name}", mode, "FAILED: no round ran", None, None, "", a.env_name)
            continue
        rounds = " / ".join(f"{x:.0f}" for x in v)
        rows.add(f"step {name}", mode, "ok", None, statistics.median(v), "steps/s",
                 f"{a.env_name}; per round {rounds}")  # fmt: skip
    rows.guard(f"step {name} logits", "check", check)
    if a.env_name == "default":
        rows.guard(f"step {name} primitives", "count", primitives)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small,medium,large", help="kernel shapes; the steps use small,large")
    p.add_argument("--step-models", default="small,large")
    p.add_argument("--rows", default="2,8", help="B (rows = 2 x batch with CFG) of the kernel cases")
    p.add_argument("--envs", default="default,no-graphs,big-graphs", help=f"of {', '.join(ENVS)}")
    p.add_argument("--modes", default="base,off,v1,new,layer")
    p.add_argument("--env-modes", default="new,layer", help="the modes of the non-default envs")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget", type=float, help="seconds for all children (default 225; dry run 900)")
    p.add_argument("--kernel-timeout", type=float, help="seconds (default 120; dry run 300)")
    p.add_argument("--step-timeout", type=float, help="seconds per step child (default 60; dry run 300)")
    p.add_argument("--warm", type=int, help="warm-up steps before timing (default 10; dry run 1)")
    p.add_argument("--no-sweep", action="store_true", help="kernel cases: default launch shapes only")
    p.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, reference ops, 4 steps")
    p.add_argument("--out")
    p.add_argument("--child", choices=["kernels", "step"], help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--env-name", default="default", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    dry = a.dry_run
    a.budget = a.budget if a.budget is not None else (900.0 if dry else 225.0)
    a.kernel_timeout = a.kernel_timeout if a.kernel_timeout is not None else (300.0 if dry else 120.0)
    a.step_timeout = a.step_timeout if a.step_timeout is not None else (300.0 if dry else 60.0)
    a.warm = a.warm if a.warm is not None else (1 if dry else 10)
    if dry and not a.child:
        a.steps, a.rounds, a.step_models = min(a.steps, 4), 1, "small"
    if a.child:
        sys.path.insert(0, str(HERE.parent))
        rows = Rows(a.json)
        (kernel_child if a.child == "kernels" else step_child)(a, rows)
        return 0
    t0 = time.monotonic()
    rows = run_children(a)
    text = "\n".join([
        f"## MusicGen decode kernel probe{' (DRY RUN: CPU, tiny shapes)' if a.dry_run else ''}", "",
        device_line(), "", table(rows), "",
        "Times: wall us per call of 100 independent calls submitted at once (host = the submit part; "
        "wall ~ host means host-bound); GB/s = weight bytes / wall. Steps/s: median of alternating rounds "
        "in one process per env.", "",
    ])  # fmt: skip
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    failed = sum(1 for r in rows if str(r[2]).startswith("FAILED"))
    log(f"{len(rows)} rows, {failed} FAILED, {time.monotonic() - t0:.0f} s")
    return 0


def device_line() -> str:
    try:
        out = subprocess.run([sys.executable, "-c", "import mlx.core as mx; print(mx.__version__, "
                              "mx.default_device(), mx.cuda.is_available())"], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        line = out.stdout.strip() or last_line(out.stderr)
    except Exception as e:  # noqa: BLE001
        line = f"(mlx version unknown: {e})"
    gpu = ""
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)  # fmt: skip
        gpu = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        pass
    when = time.strftime("%Y-%m-%d %H:%M")
    return f"mlx {line}; GPU {gpu or 'none'}; python {sys.version.split()[0]}; {when}"


if __name__ == "__main__":
    sys.exit(main())
