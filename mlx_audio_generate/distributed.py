"""The batch job's collectives over MLX's distributed layer (`mlx.launch --backend ring|nccl`).

`init_group()` joins the ranks a launcher started and refuses the two set-ups that would otherwise run
wrongly: ranks that did not connect (each would do the whole job) and, under NCCL, a rank whose GPU does
not exist (`mlx.launch --backend nccl` gives rank r `CUDA_VISIBLE_DEVICES=r`, so `-n 2` on a one-GPU machine
leaves rank 1 without a GPU: MLX's CUDA build then fails at import, "cudaMallocManaged ... no CUDA-capable
device is detected"). The console scripts run that check before they import MLX (cli/common.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees (Linux)


def gather_bytes(data: bytes, group: Any) -> list[bytes]:
    """Every rank's `data`, in rank order, on every rank: the lengths are all_gather'ed first, then each
    rank's bytes padded to the longest as one uint8 array (all_gather needs equal shapes)."""
    import mlx.core as mx

    size = group.size()
    if size == 1:
        return [data]
    lengths = np.array(mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int64), group=group))
    width = max(int(lengths.max()), 1)
    buf = np.zeros(width, np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    gathered = np.array(mx.distributed.all_gather(mx.array(buf), group=group)).reshape(size, width)
    return [gathered[r, : int(lengths[r])].tobytes() for r in range(size)]


def launched_size() -> int | None:
    """The number of ranks a launcher says it started (NCCL's MLX_WORLD_SIZE, the ring's hostfile), if any."""
    if os.environ.get("MLX_WORLD_SIZE", "").isdigit():
        return int(os.environ["MLX_WORLD_SIZE"])
    try:
        hosts = json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())
        return len(hosts) if isinstance(hosts, list) else None
    except (KeyError, OSError, ValueError):
        return None


def gpu_count(root: Path = NVIDIA_GPUS) -> int | None:
    """NVIDIA GPUs on this host, whatever CUDA_VISIBLE_DEVICES says (None: the driver lists none)."""
    try:
        return sum(1 for p in root.iterdir() if p.is_dir())
    except OSError:
        return None


def check_nccl_rank(env: dict[str, str] | None = None, gpus: int | None = None) -> None:
    """Under `mlx.launch --backend nccl` (NCCL_HOST_IP set), refuse a rank with no GPU of its own."""
    env = os.environ if env is None else env
    size = int(env["MLX_WORLD_SIZE"]) if env.get("MLX_WORLD_SIZE", "").isdigit() else 1  # set by the launcher
    if "NCCL_HOST_IP" not in env or size < 2:
        return  # one rank: it runs as a plain job on whatever device it has
    gpus = gpu_count() if gpus is None else gpus
    rank = env.get("MLX_RANK", "?")
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    if gpus is None:  # no driver listing: ask MLX (a CUDA build cannot be imported without a GPU)
        try:
            import mlx.core as mx

            if mx.cuda.is_available():
                return
        except ImportError:
            pass
        gpus = 0
    if gpus == 0 or (visible.isdigit() and int(visible) >= gpus):
        plural = "" if gpus == 1 else "s"
        raise UserError(
            f"mlx.launch --backend nccl started {size} ranks, one per GPU, but this machine has {gpus} "
            f"GPU{plural}: rank {rank} has none (CUDA_VISIBLE_DEVICES={visible or 'unset'}); use -n {gpus}"
            if gpus
            else "mlx.launch --backend nccl needs NVIDIA GPUs and this machine has none; use --backend ring"
        )


def init_group() -> Any:
    """`mx.distributed.init()`, refusing a size-1 group where a launcher started several ranks: each rank
    would then do the whole job (duplicate work and races on the same files)."""
    import mlx.core as mx

    check_nccl_rank()
    group = mx.distributed.init()
    expected = launched_size()
    if group.size() == 1 and expected and expected > 1:
        raise UserError(
            f"started as one of {expected} ranks, but MLX's distributed layer did not connect them (group of "
            "size 1); check the hostfile's IPs and ports, or the backend (mlx.launch --backend ring|nccl)"
        )
    return group


def barrier(group: Any) -> None:
    """Wait until every rank gets here (an all_sum nobody reads)."""
    import mlx.core as mx

    if group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.ones(1), group=group))
