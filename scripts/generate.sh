#!/usr/bin/env bash
# One command from a fresh clone to an audio file: sets up ./.venv with the package (first run only),
# then runs mlx-audio-generate with your arguments. The first use of a model downloads and converts it.
#   bash scripts/generate.sh --model musicgen-small --prompt "lofi piano" --seconds 10
set -euo pipefail
here=$(pwd)
cd "$(dirname "$0")/.."
linux_cpu=""
if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then linux_cpu=1; fi
stamp=.venv/.installed-$(cksum <pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  echo "setting up ./.venv (first run only: about a minute) ..." >&2
  . scripts/setup_venv.sh
  extra=""
  # NVIDIA GPU on Linux: MLX's CUDA backend.
  if [ "$(uname -s)" = Linux ] && [ -z "$linux_cpu" ]; then extra="[cuda]"; fi
  pip install -q --upgrade pip
  pip install -q -e ".$extra"
  # Linux CPU: MLX's bundled BLAS is 10-15x slower than OpenBLAS (mlx_audio_generate/_blas.py loads the
  # system's when present). Install it as scripts/test.sh does where apt can (root or password-less sudo).
  if [ -n "$linux_cpu" ] && ! python -c "import mlx_audio_generate._blas as b, sys; sys.exit(not b.candidates())" \
      && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    echo "installing OpenBLAS (libopenblas0-pthread) for fast CPU matmuls ..." >&2
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas0-pthread; } >/dev/null 2>&1 || true
  fi
  touch "$stamp"
  echo "setup done" >&2
else
  . scripts/setup_venv.sh
fi
if [ -n "$linux_cpu" ] && ! python -c "import mlx_audio_generate._blas as b, sys; sys.exit(not b.candidates())"; then
  echo "warning: no fast BLAS found; MLX's CPU backend falls back to its bundled one (10-15x slower)." \
    "Install OpenBLAS (Debian/Ubuntu: sudo apt-get install libopenblas0-pthread) or: .venv/bin/pip install -e '.[blas]'" >&2
fi
cd "$here"
exec mlx-audio-generate "$@"
