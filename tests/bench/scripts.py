"""Running a bench/ script as its smoke tests do (not a test module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python bench/<script> *args` from the repo root, stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
