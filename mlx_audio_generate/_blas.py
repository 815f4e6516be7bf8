"""Put an optimised BLAS under MLX's CPU backend on Linux.

The Linux `mlx-cpu` wheel links the reference (netlib) BLAS it bundles: fp32 matmul runs at a few GFLOP/s,
10-15x below what the same cores give with OpenBLAS or MKL. `libmlx.so` binds `cblas_sgemm` and the LAPACK
routines lazily, and the dynamic loader searches the process's global scope before the bundled library, so a
BLAS loaded with RTLD_GLOBAL *before MLX first multiplies* (best: before `import mlx.core`) takes over.

`load_blas()` looks, in order, for:
1. the library named by the environment variable `MLX_AUDIO_GENERATE_BLAS` (a path), or nothing at all if
   it is `0`, `off`, `no`, `none` or `false`;
2. the system's OpenBLAS (the fastest measured): Debian/Ubuntu `libopenblas0-pthread` /
   `libopenblas0-openmp` (`/usr/lib/<triplet>/openblas-*/libopenblas.so.0`), Fedora's
   `/usr/lib64/libopenblas*.so.0`, or whatever `ctypes.util.find_library("openblas")` finds;
3. the pip package `mkl` (`<prefix>/lib/libmkl_rt.so.*`, with `intel-openmp` and `tbb` beside it).
The first one that loads and exports `cblas_sgemm` is kept. Python loads extension modules with RTLD_NOW, so
once `mlx.core` is imported its BLAS symbols are bound for good: then `load_blas` does nothing (import
`mlx_audio_generate` before `mlx.core` to get the fast BLAS). It never raises: without any, MLX keeps its own.
Nothing happens off Linux (macOS MLX uses Accelerate).

Not tried on purpose: `cmeel-openblas` (0.3.31 is built for SKYLAKEX only: it dies with SIGILL on CPUs without
AVX-512, which no try/except can catch) and `scipy-openblas32/64` (their symbols are prefixed `scipy_`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import site
import sys
import sysconfig
from pathlib import Path

ENV = "MLX_AUDIO_GENERATE_BLAS"
_OFF = {"0", "off", "no", "none", "false"}

_loaded: str | None = None  # path of the BLAS this process loaded (None: none)
_tried = False


def _site_dirs() -> list[Path]:
    dirs: list[str] = []
    for key in ("purelib", "platlib"):
        try:
            dirs.append(sysconfig.get_paths()[key])
        except KeyError:
            pass
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # some virtualenv versions
        pass
    try:
        dirs.append(site.getusersitepackages())
    except AttributeError:
        pass
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    out: list[Path] = []
    for d in dirs:
        p = Path(d)
        if p.is_dir() and p not in out:
            out.append(p)
    return out


def _prefixes() -> list[Path]:
    """Install prefixes whose `lib/` a wheel's data files land in (venv, base interpreter, user base)."""
    out: list[Path] = []
    for p in (sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None)):
        if p and Path(p).is_dir() and Path(p) not in out:
            out.append(Path(p))
    # A --target/PYTHONPATH install puts the data files beside the packages' parent folders.
    for d in _site_dirs():
        for up in (d.parent.parent.parent, d):
            if up not in out:
                out.append(up)
    return out


def candidates() -> list[str]:
    """Paths of the BLAS libraries `load_blas` would try, in order (those that exist)."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in _OFF:
        return []
    found: list[str] = []

    def add(pattern: str) -> None:
        for p in sorted(glob.glob(pattern), reverse=True):  # highest version first
            if os.path.isfile(p) and p not in found:
                found.append(p)

    if env:
        add(env)
    triplets = ("x86_64-linux-gnu", "aarch64-linux-gnu")
    for t in triplets:
        for flavour in ("openblas-pthread", "openblas-openmp", "openblas-serial"):
            add(f"/usr/lib/{t}/{flavour}/libopenblas.so.0")
        add(f"/usr/lib/{t}/libopenblas.so.0")
    add("/usr/lib64/libopenblasp.so.0")  # Fedora: pthreads build first
    add("/usr/lib64/libopenblas.so.0")
    name = ctypes.util.find_library("openblas")
    if name and not any(os.path.basename(f) == name for f in found):
        found.append(name)  # a bare soname: the loader resolves it
    for p in _prefixes():
        add(str(p / "lib" / "libmkl_rt.so.[0-9]*"))
    return found


def _try_load(path: str) -> bool:
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False  # e.g. cmeel's OpenBLAS without the system's libgfortran.so.5
    try:
        lib.cblas_sgemm  # noqa: B018 - the symbol MLX needs
    except AttributeError:
        return False
    return True


def load_blas() -> str | None:
    """Load the first optimised BLAS found (see the module doc); return its path, or None.

    Safe to call more than once (it loads at most once per process) and never raises."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return None  # off Linux MLX has its own fast BLAS; after MLX's import it would not be used
    try:
        for path in candidates():
            if _try_load(path):
                _loaded = path
                break
    except Exception:  # a loader helper must never stop the package from importing
        _loaded = None
    return _loaded


def loaded() -> str | None:
    """The BLAS this process loaded through `load_blas`, or None."""
    return _loaded
