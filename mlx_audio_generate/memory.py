"""How much memory one request may use, refusing requests that would not fit, and bounds on config sizes.

MLX does not report a failed allocation: it aborts or segfaults (even `mx.zeros((100000, 100000))`). So
anything an input sizes (batch rows, seconds, a config's widths and layer counts) is estimated first and
refused with a one-line UserError naming the setting to lower, before any of it is allocated. The families
estimate their own requests (`<family>/memory.py`); this module knows only bytes and config fields.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import UserError

# A request may plan to use this share of what is free: the estimates are rough and the OS, the Python heap
# and MLX's allocator need the rest.
USABLE_FRACTION = 0.9
# The estimates are upper bounds measured on the CPU; where they are too cautious for a machine (or a swap
# file makes up the difference) this environment variable set to 0 turns the check off.
CHECK_ENV = "MLX_AUDIO_GENERATE_MEMORY_CHECK"


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2: no limit) -> None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1), None without a limit."""
    base = Path(root)
    for limit, usage in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        lim, used = _read_int(base / limit), _read_int(base / usage)
        if lim is not None and used is not None and lim < 1 << 60:  # v1 reports "no limit" as ~2^63
            return max(lim - used, 0)
    return None


def host_available() -> int | None:
    """Bytes the host can still give this process: Linux MemAvailable capped by the cgroup limit; elsewhere
    the physical memory (macOS has no cheap 'available' figure; Metal's own numbers are used there)."""
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if found:
        return min(found)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes() -> int | None:
    """Bytes the default MLX device can still hold (None: unknown, nothing is refused).

    CUDA: `mx.device_info()`'s free_memory (NVML, all processes) plus MLX's own reusable cache; Metal: the
    recommended working set minus what MLX holds; the CPU: the host's available memory plus MLX's cache."""
    import mlx.core as mx

    cache = mx.get_cache_memory()
    if mx.default_device().type == mx.gpu:
        info = mx.device_info()
        if "free_memory" in info:
            return int(info["free_memory"]) + cache
        if "max_recommended_working_set_size" in info:
            return max(int(info["max_recommended_working_set_size"]) - mx.get_active_memory(), 0) + cache
    host = host_available()
    return None if host is None else host + cache


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**27 else f"{n / 2**20:.0f} MiB"


def check_fits(bytes_needed: float, what: str, setting_hint: str, available: int | None = None) -> None:
    """UserError (one line) if `bytes_needed` exceeds the usable share of the device's free memory.

    what: the thing being sized ("this request"); setting_hint: what to lower ("the batch size or seconds").
    available: the free bytes (default `available_bytes()`)."""
    if os.environ.get(CHECK_ENV, "1") == "0":
        return
    free = available_bytes() if available is None else available
    if free is None or bytes_needed <= free * USABLE_FRACTION:
        return
    raise UserError(
        f"{what} needs about {gib(bytes_needed)} of memory but only {gib(free)} is free on this device; "
        f"lower {setting_hint} (or set {CHECK_ENV}=0 to try anyway)"
    )


def nbytes(*dims: int, itemsize: int = 4) -> int:
    """Bytes of a tensor of these dimensions (Python ints: no overflow however absurd the sizes)."""
    return math.prod(int(d) for d in dims) * itemsize


def stored_itemsize(config: dict[str, Any]) -> float:
    """Bytes per parameter of a converted folder's weights, from its config.json metadata (the dtype, or the
    quantization's bits: a lower bound, as its dense layers are wider)."""
    meta = config.get("mlx_audio_generate")
    meta = meta if isinstance(meta, dict) else {}
    size = {"float32": 4, "bfloat16": 2, "float16": 2}.get(str(meta.get("dtype", "float32")), 4)
    quant = meta.get("quantization")
    bits = quant.get("bits") if isinstance(quant, dict) else None
    return min(size, bits / 8) if isinstance(bits, int | float) and bits > 0 else size


def t5_params(t5: Any) -> int:
    """Parameters of a T5 encoder config (text/t5.py's T5Config): the embedding and every layer."""
    d, inner = t5.d_model, t5.num_heads * t5.d_kv
    return t5.vocab_size * d + t5.num_layers * (4 * d * inner + (3 if t5.is_gated_act else 2) * d * t5.d_ff)


def check_bounds(values: object, bounds: dict[str, tuple[float, float]], what: str) -> None:
    """UserError naming the first field of `values` (a config dataclass or a dict) outside its [lo, hi].

    For the config fields that size tensors: the bounds lie far above every released checkpoint, so only an
    absurd value (1e6 layers, a 1e11-sample window) is refused, before a model is built from it."""
    for key, (lo, hi) in bounds.items():
        if isinstance(values, dict) and key not in values:
            continue  # a dict checks only the fields it holds
        v = values[key] if isinstance(values, dict) else getattr(values, key)
        for x in v if isinstance(v, tuple | list) else (v,):  # a tuple (strides, ratios): each entry
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise UserError(f"{what} config field {key}={v!r} is not a number")
            if not lo <= x <= hi:
                raise UserError(
                    f"{what} config field {key}={v} is out of range [{lo:g}, {hi:g}]; the config is corrupt"
                )
