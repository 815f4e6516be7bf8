"""The optimised-BLAS loader (`mlx_audio_generate._blas`): finds and loads a BLAS before MLX, never fails.

Each check runs in a fresh interpreter: a BLAS can only take over before `mlx.core` is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_audio_generate import _blas

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the loader acts on Linux only")

CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
import mlx_audio_generate  # the package import is what must load the BLAS (before mlx.core)
from mlx_audio_generate import _blas
_blas.load_blas()
import mlx.core as mx
import numpy as np
mx.set_default_device(mx.cpu)
rng = np.random.default_rng(0)
a = rng.standard_normal((96, 200)).astype(np.float32)
b = rng.standard_normal((200, 130)).astype(np.float32)
m = rng.standard_normal((24, 24)).astype(np.float32) + 24 * np.eye(24, dtype=np.float32)
prod = np.array(mx.array(a) @ mx.array(b))
inv = np.array(mx.linalg.inv(mx.array(m), stream=mx.cpu))  # LAPACK (getrf/getri) goes through it too
maps = open("/proc/self/maps").read()
print(json.dumps({{
    "loaded": _blas.loaded(),
    "mapped": sorted({{l.split()[-1] for l in maps.splitlines() if "blas" in l.lower() or "mkl_rt" in l}}),
    "matmul_err": float(np.abs(prod - a.astype(np.float64) @ b).max()),
    "inv_err": float(np.abs(inv @ m - np.eye(24)).max()),
}}))
"""


def run_child(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop(_blas.ENV, None)
    if env_value is not None:
        env[_blas.ENV] = env_value
    p = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT))], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def found_blas() -> str | None:
    saved = os.environ.pop(_blas.ENV, None)
    try:
        libs = _blas.candidates()
    finally:
        if saved is not None:
            os.environ[_blas.ENV] = saved
    return libs[0] if libs else None


def check_results(r: dict) -> None:
    assert r["matmul_err"] < 1e-3  # fp32 sums of 200 products of N(0, 1) values
    assert r["inv_err"] < 1e-4


@linux_only
def test_loads_the_blas_it_finds_and_results_stay_correct():
    lib = found_blas()
    if lib is None:
        pytest.skip(
            "no optimised BLAS installed (e.g. apt-get install libopenblas0-pthread, or pip install mkl)"
        )
    r = run_child(None)
    assert r["loaded"] == lib
    real = os.path.realpath(lib) if os.path.isabs(lib) else None
    if real is not None:
        assert any(os.path.realpath(m) == real for m in r["mapped"]), r["mapped"]
    check_results(r)


@linux_only
def test_env_var_names_the_library():
    lib = found_blas()
    if lib is None or not os.path.isabs(lib):
        pytest.skip("no optimised BLAS installed at a known path")
    r = run_child(lib)
    assert r["loaded"] == lib
    check_results(r)


@linux_only
def test_env_var_turns_it_off():
    r = run_child("off")
    assert r["loaded"] is None
    names = [os.path.basename(m) for m in r["mapped"]]
    assert not any(n.startswith(("libopenblas", "libmkl_rt")) for n in names), names  # numpy's own is fine
    check_results(r)  # MLX's bundled reference BLAS


@linux_only
def test_unloadable_library_is_skipped_without_error(tmp_path):
    bogus = tmp_path / "libopenblas.so.0"
    bogus.write_text("not a shared library")
    r = run_child(str(bogus))
    assert r["loaded"] != str(bogus)  # falls through to the next candidate (or none)
    check_results(r)


def test_candidates_respect_off(monkeypatch):
    monkeypatch.setenv(_blas.ENV, "0")
    assert _blas.candidates() == []


def test_no_load_after_mlx_core():
    # In this pytest process mlx.core is already imported: loading now would be useless, so it must not.
    import mlx.core  # noqa: F401

    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import mlx.core; "
        "from mlx_audio_generate import _blas; print(_blas.load_blas())"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "None"
