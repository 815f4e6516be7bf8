"""A small load test of the real mlx-audio-server: concurrent clients, every clip checked, no memory growth.

The full version (50 jobs, reported numbers) is bench/server_load.py; this runs its `run_load` smaller.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("soundfile")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "server_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("server_load_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_concurrent_clients(musicgen_converted, tmp_path):
    bench = _bench()
    log = tmp_path / "server.log"
    with bench.start_tiny_server(musicgen_converted, tmp_path / "out", log) as (proc, url):
        result = bench.run_load(url, proc.pid, jobs=12, clients=4, seconds=0.3, job_timeout=60)
        alive = proc.poll() is None
    assert not result.errors, result.errors
    assert alive
    assert len(result.latencies) == 12
    assert result.groups >= 2  # jobs with identical inputs were compared sample for sample
    assert result.sample_rate == 32000
    clips = sorted((tmp_path / "out").glob("*.wav"))
    assert len(clips) == 12 + 2  # + the warm-up jobs
    if result.rss_start and result.rss_end:
        assert result.rss_end["VmRSS"] - result.rss_start["VmRSS"] < 300, (result.rss_start, result.rss_end)
        assert result.rss_end["VmHWM"] - result.rss_start["VmHWM"] < 300, (result.rss_start, result.rss_end)
