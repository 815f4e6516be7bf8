"""Shared helpers of the benchmark scripts (not a test module; no pytest here).

Each script runs from a checkout without installing the package: the repo root (or `BENCH_PKG_ROOT`, e.g. a
snapshot of a commit) goes on `sys.path`, and the optimised BLAS is loaded before MLX (Linux CPU).
"""

from __future__ import annotations

import ast
import datetime
import importlib
import os
import platform
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG_ROOT = Path(os.environ.get("BENCH_PKG_ROOT", str(ROOT))).resolve()
for p in (str(ROOT), str(PKG_ROOT)):  # PKG_ROOT first: it wins
    if p not in sys.path:
        sys.path.insert(0, p)

from mlx_audio_generate import _blas  # noqa: E402

BLAS = _blas.load_blas()  # before mlx.core

import mlx.core as mx  # noqa: E402

DATE = os.environ.get("BENCH_DATE", datetime.date.today().isoformat())


def parse_list(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def mx_dtype(name: str) -> mx.Dtype:
    return {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}[name]


def mlx_device() -> str:
    d = mx.default_device()
    return "gpu" if d == mx.gpu else "cpu"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_line() -> str:
    """One line naming the hardware and software of this run."""
    parts = [f"date {DATE}", f"mlx {mx.__version__} ({mlx_device()})"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        else:
            parts.append(f"torch threads {torch.get_num_threads()}")
    except ImportError:
        pass
    parts.append(f"CPU {cpu_name()} x{os.cpu_count()}")
    if mlx_device() == "cpu":
        parts.append(f"BLAS {BLAS or 'MLX bundled reference BLAS'}")
    return ", ".join(parts)


def mx_sync(*arrays) -> None:
    if arrays:
        mx.eval(*arrays)
    mx.synchronize()


def mx_reset_mem() -> None:
    mx.synchronize()
    mx.clear_cache()
    mx.reset_peak_memory()


def mx_peak_gb() -> float:
    return mx.get_peak_memory() / 1e9


def mx_free() -> None:
    import gc

    gc.collect()
    mx.synchronize()
    mx.clear_cache()


# ------------------------------------------------------------------------------------------------ torch side


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class TorchMem:
    """Peak memory of a torch section: CUDA's max_memory_allocated, or on CPU the peak RSS growth over the
    section (sampled every 5 ms by a thread: /proc/self/statm)."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = 0
        else:
            self.base = _rss_bytes()
            self.peak = self.base
            self._stop = threading.Event()
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_gb = torch.cuda.max_memory_allocated() / 1e9
        else:
            self._stop.set()
            self._t.join()
            self.peak = max(self.peak, _rss_bytes())
            self.peak_gb = (self.peak - self.base) / 1e9
        return False


def torch_free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def timed(store: dict, key: str, sync=None):
    """Wall time of the block (seconds) into store[key]; `sync()` is called before reading the clock."""
    t0 = time.perf_counter()
    yield
    if sync is not None:
        sync()
    store[key] = time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- reports


class Report:
    """Markdown sections printed as they come and (re)written to `--out` after each one."""

    def __init__(self, title: str, out: str | None):
        self.out = Path(out) if out else None
        self.lines = [f"## {title}", "", device_line(), ""]
        self._keyed: dict[str, tuple[int, int]] = {}
        self._flush()

    def para(self, text: str) -> None:
        self.lines += [text, ""]
        print(text, flush=True)
        self._flush()

    def table(self, header: list[str], rows: list[list], note: str | None = None, key: str | None = None):
        """Add a table; with `key`, a later call with the same key replaces it in place (partial results
        are on disk after every model, and the final file holds each table once)."""
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in rows:
            out.append("| " + " | ".join(fmt(c) for c in r) + " |")
        if note:
            out += ["", note]
        out.append("")
        if key is not None and key in self._keyed:
            start, n = self._keyed[key]
            self.lines[start : start + n] = out
            for k, (s0, n0) in self._keyed.items():
                if s0 > start:
                    self._keyed[k] = (s0 + len(out) - n, n0)
            self._keyed[key] = (start, len(out))
        else:
            if key is not None:
                self._keyed[key] = (len(self.lines), len(out))
            self.lines += out
        print("\n".join(out), flush=True)
        self._flush()

    def _flush(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text("\n".join(self.lines) + "\n")


def fmt(c) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        if c >= 100:
            return f"{c:.0f}"
        if c >= 10:
            return f"{c:.1f}"
        if c >= 1:
            return f"{c:.2f}"
        return f"{c:.3f}"
    return str(c)


def time_steps(gen, steps: int, warm: int) -> float:
    """Steps/s of a generator yielding one lazy array per step: `steps` steps timed after `warm`, both ends
    synchronised with mx.eval (so the asynchronously pipelined steps in between are counted in full)."""
    t0 = 0.0
    for i, out in enumerate(gen):
        if i == warm:
            mx.eval(out)
            t0 = time.perf_counter()
        if i == warm + steps:
            mx.eval(out)
            return steps / (time.perf_counter() - t0)
    raise RuntimeError("not enough steps")


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ graph op counts

# Primitives that are views or metadata changes in MLX (no kernel of their own in the usual case).
VIEW_OPS = {
    "Broadcast", "Reshape", "Transpose", "Slice", "AsStrided", "Squeeze", "ExpandDims", "Split",
    "StopGradient", "Depends", "BroadcastAxes", "Unflatten", "Flatten",
}  # fmt: skip


@contextmanager
def gpu_fast_ops():
    """While active on the CPU, mx.fast's layer_norm / rms_norm / rope / SDPA each build ONE stand-in
    primitive (a Concatenate of their array inputs) instead of their decomposed CPU fallback graphs, as each
    is one kernel on the GPU; so `count_ops` here counts the graph the GPU runs. For counting only: the
    values are wrong. Clear compiled-function caches before and after (they trace what they see)."""
    if mx.default_device().type == mx.DeviceType.gpu:
        yield
        return

    def one(*args, like, **kw):
        # every array input of the dtype (masks, biases computed in-graph count too; no casts added)
        arrays = [a for a in (*args, *kw.values()) if isinstance(a, mx.array) and a.dtype == like.dtype]
        flat = [a.reshape(-1) for a in arrays]
        flat = mx.concatenate(flat + [flat[0][:1]])  # two inputs at least: a concatenate of one is a no-op
        return flat[: like.size].reshape(like.shape)

    fast = mx.fast
    saved = {n: getattr(fast, n) for n in ("layer_norm", "rms_norm", "rope", "scaled_dot_product_attention")}
    fast.layer_norm = lambda x, *a, **kw: one(x, *a, like=x, **kw)
    fast.rms_norm = lambda x, *a, **kw: one(x, *a, like=x, **kw)
    fast.rope = lambda a, *args, **kw: one(a, *args, like=a, **kw)
    fast.scaled_dot_product_attention = lambda q, k, v, **kw: one(q, k, v, like=q, **kw)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(fast, n, f)


def count_ops(*outputs) -> tuple[int, int, dict[str, int]]:
    """Primitives in the (unevaluated) graph of `outputs`: (all, non-view, per-name counts).

    Leaf arrays that are already evaluated (weights, inputs) are not counted."""
    import collections
    import re
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".dot") as f:
        mx.export_to_dot(f.name, *outputs)
        text = Path(f.name).read_text()
    names = re.findall(r'\[label ="([^"]+)", shape=rectangle\]', text)
    counts = collections.Counter(names)
    kernels = sum(v for k, v in counts.items() if k not in VIEW_OPS)
    return len(names), kernels, dict(counts.most_common())


def apply_sets(package: str, sets: list[str]) -> None:
    """Set `module.path.NAME=literal` under `package` (e.g. musicgen.layer_kernel.BLOCK=256): a knob A/B of
    one checkout in one process."""
    for item in sets:
        target, sep, value = item.partition("=")
        module, dot, name = target.rpartition(".")
        if not (sep and dot and module and name):
            raise SystemExit(f"a setting is module.NAME=value, not {item!r}")
        mod = importlib.import_module(f"{package}.{module}")
        if not hasattr(mod, name):
            raise SystemExit(f"{package}.{module} has no {name}")
        try:
            setattr(mod, name, ast.literal_eval(value))
        except (ValueError, SyntaxError):
            raise SystemExit(f"{value!r} (for {target}) is not a Python literal") from None
