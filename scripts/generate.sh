#!/usr/bin/env bash
# One command from a fresh clone to an audio file: sets up ./.venv with the package (first run only),
# then runs mlx-audio-generate with your arguments. The first use of a model downloads and converts it.
#   bash scripts/generate.sh --model musicgen-small --prompt "lofi piano" --seconds 10
set -euo pipefail
here=$(pwd)
cd "$(dirname "$0")/.."
. scripts/setup_venv.sh
stamp=.venv/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  extra=""
  # NVIDIA GPU on Linux: MLX's CUDA backend.
  if [ "$(uname -s)" = Linux ] && command -v nvidia-smi >/dev/null 2>&1; then extra="[cuda]"; fi
  pip install -q --upgrade pip
  pip install -q -e ".$extra"
  touch "$stamp"
fi
cd "$here"
exec mlx-audio-generate "$@"
