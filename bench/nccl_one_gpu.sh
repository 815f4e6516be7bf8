# Issue 20 on a one-GPU machine: mlx.launch --backend nccl with 1 rank (a plain job) and 2 ranks (refused).
# Run from the repo root: bash bench/nccl_one_gpu.sh (needs torch + transformers for the tiny random model).
set +e
export PYTHONPATH=${PYTHONPATH:-$PWD}
L=$(command -v mlx.launch)
[ -n "$L" ] || { printf 'import sys\nfrom mlx._distributed_utils.launch import main\nsys.exit(main())\n' > /tmp/mlx_launch.py; L="python3 /tmp/mlx_launch.py"; }
echo "== launcher: $L"
echo "== GPUs the driver lists: $(ls /proc/driver/nvidia/gpus | wc -l)"; nvidia-smi -L
CUDA_VISIBLE_DEVICES=1 python3 -c "import mlx.core as mx; print('CUDA_VISIBLE_DEVICES=1: cuda', mx.cuda.is_available(), mx.default_device())" 2>&1 | tail -2
W=/tmp/nccl-work; mkdir -p $W
python3 -c "
import sys; sys.path.insert(0, 'bench')
from pathlib import Path
from distributed import build_model
print(build_model('tiny', Path('$W')))" 2>&1 | tail -1
M=$W/musicgen-tiny
printf '{"prompt": "a", "seconds": 0.5}\n{"prompt": "b", "seconds": 0.5}\n{"prompt": "c", "seconds": 0.5}\n' > $W/jobs.jsonl
python3 -m mlx_audio_generate.cli.batch --weights-dir $M --prompts-file $W/jobs.jsonl --output-dir $W/plain --quiet; echo "plain rc=$?"
echo "== -n 1 --backend nccl"
timeout 180 $L -n 1 --backend nccl -- python3 -m mlx_audio_generate.cli.batch --weights-dir $M --prompts-file $W/jobs.jsonl --output-dir $W/n1 --quiet; echo "n1 rc=$?"
ls $W/n1; for f in $W/plain/*.wav; do cmp -s $f $W/n1/$(basename $f) && echo "same $(basename $f)" || echo "DIFFERENT $(basename $f)"; done
echo "== -n 2 --backend nccl on one GPU"
t0=$(date +%s); timeout 180 $L -n 2 --backend nccl -- python3 -m mlx_audio_generate.cli.batch --weights-dir $M --prompts-file $W/jobs.jsonl --output-dir $W/n2 --quiet; echo "n2 rc=$? after $(( $(date +%s) - t0 )) s"
ls $W/n2 2>&1
