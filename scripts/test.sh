#!/usr/bin/env bash
# Set up everything the test suite needs in ./.venv and run it (lint + pytest). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup_venv.sh
pip install -q --upgrade pip
# torch for the reference implementations. PyPI's Linux wheel is the CUDA build (multi-GB, plus ~15 nvidia
# wheels): on Linux without an NVIDIA GPU take the CPU build from PyTorch's CPU index; where that index cannot
# be reached (our CI: offline, its pip serves a CPU wheel from local disk), whatever pip finds. macOS: PyPI's.
TORCH="torch==2.13.0"
CPU_INDEX=https://download.pytorch.org/whl/cpu
if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1 \
    && python -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=10)" >/dev/null 2>&1; then
  pip install -q "$TORCH" --index-url "$CPU_INDEX"
else
  pip install -q "$TORCH"
fi
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
