"""The original uv quick start (../shared/seed's README is the contract): `uv sync`,
`uv run mlx-audio-convert`, `uv run mlx-audio-generate`, `uv run ruff check .`, `uv run ruff format .`,
`uv run pytest`.

Always checked (no uv needed): the packaging that flow relies on (a dev group with ruff and pytest, a
committed uv.lock, the SPDX licence string) and that no test module imports a reference library at module
level unguarded (without torch, `uv run pytest` would stop with collection errors). The flow itself runs
from a fresh clone when uv is on PATH and MLX_AUDIO_GENERATE_TEST_UV=1 (it needs PyPI: minutes)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.reference import REFERENCE_ROOTS

REPO = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_packaging_for_the_uv_flow():
    data = pyproject()
    assert data["project"]["license"] == "Apache-2.0"  # PEP 639 string, not the deprecated table
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in data["build-system"]["requires"])
    dev = data["dependency-groups"]["dev"]
    assert dev == ["mlx-audio-generate[test]"]
    test_extra = " ".join(data["project"]["optional-dependencies"]["test"])
    assert "pytest" in test_extra and "ruff" in test_extra
    assert not any("torch" in d for d in data["project"]["optional-dependencies"]["test"])
    lock = (REPO / "uv.lock").read_text()
    for name in ("mlx-audio-generate", "pytest", "ruff"):
        assert f'name = "{name}"' in lock, name


def _guarded_imports(path: Path, root: Path = REPO) -> list[str]:
    """Module-level imports of reference libraries that come before any `require(...)` /
    `pytest.importorskip(...)` at module level: each would be a collection error without them."""
    tree = ast.parse(path.read_text())
    bad, guarded = [], False
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.Expr) and isinstance(node.value, ast.Call):
            f = node.value.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            guarded = guarded or name in ("require", "importorskip")
        roots = []
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots = [node.module.split(".")[0]]
        if not guarded and REFERENCE_ROOTS & set(roots):
            bad.append(f"{path.relative_to(root)}:{node.lineno}")
    return bad


def test_no_test_module_imports_a_reference_library_unguarded():
    files = [p for p in (REPO / "tests").rglob("*.py") if "reference" not in p.relative_to(REPO).parts[1:2]]
    bad = [b for p in files for b in _guarded_imports(p)]
    assert bad == [], f"module-level reference imports without tests.reference.require first: {bad}"


def test_the_guard_check_catches_an_unguarded_import(tmp_path):
    (tmp_path / "t.py").write_text("import numpy\nimport torch\n")
    (tmp_path / "ok.py").write_text(
        "from tests.reference import require\ntorch = require('torch')\nimport torch\n"
    )
    assert _guarded_imports(tmp_path / "t.py", tmp_path) == ["t.py:2"]
    assert _guarded_imports(tmp_path / "ok.py", tmp_path) == []


def test_missing_reference_finds_torch_behind_a_user_error():
    from mlx_audio_generate.errors import UserError
    from tests.reference import missing_reference

    def pickle_read():
        try:
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        except ImportError:
            raise UserError("x.pt is a pickle; reading it needs PyTorch") from None

    try:
        try:
            pickle_read()
        except UserError as e:
            raise UserError(f"cannot convert 'm': {e}") from e
    except UserError as e:
        assert missing_reference(e) == "torch"
    assert missing_reference(UserError("unrelated")) is None
    assert missing_reference(ModuleNotFoundError("x", name="numpy")) is None


def _uv(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(["uv", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"uv {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    return r


@pytest.mark.skipif(
    not (shutil.which("uv") and os.environ.get("MLX_AUDIO_GENERATE_TEST_UV") == "1"),
    reason="the uv flow needs uv on PATH, PyPI and minutes: set MLX_AUDIO_GENERATE_TEST_UV=1 to run it",
)
def test_the_seed_uv_commands_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["HF_HUB_OFFLINE"] = "1"
    _uv(["sync"], clone, env)
    site = next((clone / ".venv" / "lib").glob("python*/site-packages"))
    assert not (site / "torch").exists()  # no torch, let alone a CUDA one
    _uv(["run", "ruff", "check", "."], clone, env)
    _uv(["run", "ruff", "format", "."], clone, env)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True)
    assert status.stdout == "", status.stdout  # a clean tree: nothing to format, uv.lock up to date
    r = _uv(["run", "pytest", "--collect-only", "-q"], clone, env)
    assert "error" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
    for cmd in ("mlx-audio-convert", "mlx-audio-generate"):
        r = subprocess.run(["uv", "run", cmd, "--help"], cwd=clone, env=env, capture_output=True, text=True)
        assert r.returncode == 0 and "--model" in r.stdout, r.stderr
    # offline, the quick start's conversion fails in one clear line, leaving no ./converted behind
    r = subprocess.run(
        ["uv", "run", "mlx-audio-convert", "--model", "facebook/musicgen-small", "--output", "converted/m"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (clone / "converted").exists()
