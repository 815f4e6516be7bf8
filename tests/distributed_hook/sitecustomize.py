"""Test-only, outside the package: Python loads this at start-up in every rank that
tests/test_distributed.py starts with PYTHONPATH pointing here. With
MLX_AUDIO_GENERATE_TEST_KILL_AFTER=<rank>:<k>, rank <rank> (mlx.launch's MLX_RANK) SIGKILLs itself right after
writing the final sidecar (the done marker) of its k-th item: a crashed machine in the middle of a job."""

import os

_spec = os.environ.get("MLX_AUDIO_GENERATE_TEST_KILL_AFTER")
if _spec and os.environ.get("MLX_RANK") == _spec.split(":")[0]:
    import signal
    from pathlib import Path

    import mlx_audio_generate.weights as _weights

    _limit, _done = int(_spec.split(":")[1]), []
    _original = _weights.atomic_write

    def _atomic_write(path, write, *args, **kwargs):
        _original(path, write, *args, **kwargs)
        p = Path(path)
        if p.name.endswith(".json") and "seconds_taken" in p.read_text():  # the final sidecar of an item
            _done.append(p.name)
            if len(_done) == _limit:
                os.kill(os.getpid(), signal.SIGKILL)

    _weights.atomic_write = _atomic_write
