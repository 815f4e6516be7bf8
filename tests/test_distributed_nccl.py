"""`mlx.launch --backend nccl` on a machine with fewer GPUs than ranks: a clear one-line error, not a hang.

The launcher gives rank r `CUDA_VISIBLE_DEVICES=r`; a rank whose GPU does not exist is refused before MLX's
distributed layer starts (distributed.check_nccl_rank). One rank under NCCL runs as a plain job. The
end-to-end case runs the real launcher on this machine (no NVIDIA GPU: the CPU CI), where NCCL cannot
serve at all.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlx_audio_generate.distributed import check_nccl_rank, gpu_count
from mlx_audio_generate.errors import UserError

LAUNCH = Path(sys.executable).with_name("mlx.launch")


def nccl_env(rank: int, size: int) -> dict[str, str]:
    return {"NCCL_HOST_IP": "127.0.0.1", "NCCL_PORT": "5000", "MLX_WORLD_SIZE": str(size),
            "MLX_RANK": str(rank), "CUDA_VISIBLE_DEVICES": str(rank)}  # fmt: skip


def test_rank_without_its_gpu_is_refused():
    check_nccl_rank(nccl_env(0, 2), gpus=1)  # rank 0 has GPU 0
    with pytest.raises(UserError) as e:
        check_nccl_rank(nccl_env(1, 2), gpus=1)
    msg = str(e.value)
    assert "\n" not in msg
    assert "2 ranks" in msg and "1 GPU:" in msg and "rank 1" in msg and "use -n 1" in msg


def test_ranks_within_the_gpus_and_single_rank_pass():
    for rank in range(4):
        check_nccl_rank(nccl_env(rank, 4), gpus=8)
    check_nccl_rank(nccl_env(0, 1), gpus=1)  # one rank: a plain job
    check_nccl_rank(nccl_env(0, 1), gpus=0)
    check_nccl_rank({"MLX_WORLD_SIZE": "2", "MLX_RANK": "1"}, gpus=0)  # ring: not ours to check


def test_no_gpu_at_all_says_use_ring():
    with pytest.raises(UserError, match="has none; use --backend ring"):
        check_nccl_rank(nccl_env(0, 2), gpus=0)


def test_gpu_count_reads_the_driver_folder(tmp_path):
    assert gpu_count(tmp_path / "missing") is None
    for i in range(3):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    assert gpu_count(tmp_path) == 3


@pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed beside python")
@pytest.mark.skipif(
    gpu_count() not in (None, 0), reason="this machine has NVIDIA GPUs (the device run covers it)"
)
def test_launch_nccl_without_gpus_ends_in_one_line(musicgen_converted, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    cmd = [str(LAUNCH), "-n", "2", "--backend", "nccl", "--", sys.executable, "-m"]
    cmd += ["mlx_audio_generate.cli.batch", "--weights-dir", str(musicgen_converted)]
    cmd += ["--prompts-file", str(jobs), "--output-dir", str(tmp_path / "o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       cwd=Path(__file__).parents[1])  # fmt: skip
    assert "exited with code 2" in r.stderr, r.stderr  # mlx.launch itself exits 0 (README: batch jobs)
    assert "Traceback" not in r.stderr, r.stderr
    assert "needs NVIDIA GPUs and this machine has none; use --backend ring" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())  # nothing written
