#!/usr/bin/env bash
# Set up everything the test suite needs in ./.venv and run it (lint + pytest). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup_venv.sh
pip install -q --upgrade pip
# A CPU build of torch for the reference implementations; an unpinned torch pulls a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[test]" -r tests/requirements-reference.txt
pip install -q --no-deps -r tests/requirements-sat.txt

# The web UI is tested in a real headless Chromium: Debian's package (Playwright's own browser download
# needs internet access that CI does not have). Elsewhere, install Chromium yourself or set CHROMIUM.
# OpenBLAS makes MLX's Linux CPU matmuls ~15x faster (mlx_audio_generate/_blas.py loads it when present).
if command -v apt-get >/dev/null 2>&1; then
  need=""
  command -v chromium >/dev/null 2>&1 || need="$need chromium"
  ls /usr/lib/*/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 || need="$need libopenblas0-pthread"
  if [ -n "$need" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $need >/dev/null
  fi
fi

ruff check .
ruff format --check .
python -m pytest -q "$@"
