"""Load test of mlx-audio-server: many jobs from concurrent clients against the real server on loopback.

    python bench/server_load.py                                  # 50 jobs, 4 clients, the tiny test model
    python bench/server_load.py --jobs 50 --clients 4 --seconds 0.5 --out load.md
    python bench/server_load.py --model-dir converted/musicgen-small --jobs 20 --seconds 2

The server runs as its own process (`python -m mlx_audio_generate.cli.serve --model tiny=DIR`) on a free
127.0.0.1 port; mlx_audio_generate/server/launch.py starts it and waits until it answers. After a warm-up
(the first job loads the weights) each client thread submits its share of the jobs one after another
(submit, poll until finished, download the WAV). Every clip is checked: it reads with soundfile, has the
model's sample rate and the requested duration, and jobs with the same seed and parameters give identical
samples. RSS of the server process (VmRSS, and the peak VmHWM) is read from /proc/<pid>/status after the
warm-up and at the end. Latency = submit -> audio downloaded, per job.
Afterwards GET /api/models must still answer.

tests/test_server_load.py runs a smaller version of the same `run_load` in the test suite.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("warm piano", "drum loop", "ambient pad")
SETTINGS = ({}, {"temperature": 0.7, "top_k": 50})


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (current) and VmHWM (peak) of `pid`, in MB (Linux /proc; empty elsewhere)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def start_tiny_server(model_dir: Path, output_dir: Path, log_path: Path, timeout: float = 60.0):
    """The real server serving `model_dir` as "tiny" on a free loopback port: a context manager yielding
    `(proc, url)` that always stops it."""
    sys.path.insert(0, str(ROOT))
    from mlx_audio_generate.server.launch import serve

    args = ["--model", f"tiny={Path(model_dir).resolve()}", "--output-dir", str(output_dir)]
    args += ["--data-dir", str(Path(output_dir) / "data")]  # its own history, not the user's
    return serve(args, log_path=log_path, timeout=timeout)


@dataclass
class Result:
    jobs: int
    clients: int
    seconds: float
    wall: float
    latencies: list[float]
    rss_start: dict[str, float]
    rss_end: dict[str, float]
    sample_rate: int
    errors: list[str] = field(default_factory=list)
    groups: int = 0  # distinct (prompt, seed, params) with more than one job: all compared equal

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def table(self) -> str:
        rows = [
            ("jobs", f"{self.jobs}"),
            ("clients", f"{self.clients}"),
            ("seconds of audio per job", f"{self.seconds:g}"),
            ("wall time", f"{self.wall:.2f} s"),
            ("jobs/s", f"{self.jobs_per_s:.2f}"),
            ("job latency p50", f"{self.pct(50):.3f} s"),
            ("job latency p95", f"{self.pct(95):.3f} s"),
            ("server RSS after warm-up", f"{self.rss_start.get('VmRSS', float('nan')):.0f} MB"),
            ("server RSS at end", f"{self.rss_end.get('VmRSS', float('nan')):.0f} MB"),
            ("server peak RSS (VmHWM) after warm-up", f"{self.rss_start.get('VmHWM', float('nan')):.0f} MB"),
            ("server peak RSS (VmHWM) at end", f"{self.rss_end.get('VmHWM', float('nan')):.0f} MB"),
            ("identical-input groups compared", f"{self.groups}"),
            ("errors", f"{len(self.errors)}"),
        ]
        lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)


def job_body(i: int, seconds: float, variants: int = 6) -> dict:
    """Job i's request: one of `variants` (prompt, seed, settings) combinations, so that every few jobs
    repeat identical inputs (same audio expected) and neighbours differ (different audio expected)."""
    v = i % variants
    return {
        "model": "tiny",
        "prompt": PROMPTS[v % len(PROMPTS)],
        "seconds": seconds,
        "seed": v,
        **SETTINGS[v % len(SETTINGS)],
    }


def _one_job(client, body: dict, timeout: float) -> tuple[np.ndarray, int, float]:
    import soundfile as sf

    t0 = time.monotonic()
    r = client.post("/api/jobs", json=body)
    if r.status_code != 202:
        raise RuntimeError(f"submit: HTTP {r.status_code} {r.text}")
    job_id = r.json()["id"]
    deadline = t0 + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] == "done":
            break
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.02)
    r = client.get(job["audio_url"])
    if r.status_code != 200:
        raise RuntimeError(f"audio of {job_id}: HTTP {r.status_code}")
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)
    return audio.T, sr, time.monotonic() - t0


def run_load(
    url: str,
    pid: int,
    jobs: int = 50,
    clients: int = 4,
    seconds: float = 0.5,
    job_timeout: float = 120.0,
    warmup: int = 2,
) -> Result:
    """Warm up, then `jobs` jobs from `clients` threads; every clip checked. Raises nothing for job errors:
    they are collected in `Result.errors`."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as c:
        sample_rate = c.get("/api/models").json()[0]["sample_rate"]
        for i in range(warmup):
            _one_job(c, job_body(i, seconds), job_timeout)
    rss_start = rss_mb(pid)

    results: dict[int, np.ndarray] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    expected = round(seconds * sample_rate)

    def client_thread(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(k, jobs, clients):
                try:
                    audio, sr, latency = _one_job(c, job_body(i, seconds), job_timeout)
                    if sr != sample_rate or audio.shape[1] != expected or not np.isfinite(audio).all():
                        raise RuntimeError(f"job {i}: {sr} Hz, {audio.shape[1]} samples (want {expected})")
                    with lock:
                        results[i] = audio
                        latencies.append(latency)
                except Exception as e:  # noqa: BLE001 - reported, counted, never hidden
                    with lock:
                        errors.append(f"job {i}: {e}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client_thread, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(job_timeout * jobs)
    wall = time.monotonic() - t0
    rss_end = rss_mb(pid)

    # same inputs -> same samples
    groups: dict[tuple, list[int]] = {}
    for i in results:
        body = job_body(i, seconds)
        groups.setdefault(tuple(sorted((k, str(v)) for k, v in body.items())), []).append(i)
    shared = [g for g in groups.values() if len(g) > 1]
    firsts = [g[0] for g in groups.values()]
    for a, b in zip(firsts, firsts[1:], strict=False):
        if np.array_equal(results[a], results[b]):
            errors.append(f"jobs {a} and {b} have different inputs but identical audio")
    for g in shared:
        for i in g[1:]:
            if not np.array_equal(results[g[0]], results[i]):
                errors.append(f"jobs {g[0]} and {i} have the same inputs but different audio")
    if len(results) < jobs:
        errors.append(f"only {len(results)} of {jobs} jobs finished")
    with httpx.Client(base_url=url, timeout=10) as c:
        if c.get("/api/models").status_code != 200:
            errors.append("GET /api/models fails after the run")
    return Result(
        jobs, clients, seconds, wall, latencies, rss_start, rss_end, sample_rate, errors, len(shared)
    )


def build_tiny(work: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    import mlx_audio_generate  # noqa: F401  (optimised BLAS first)
    from mlx_audio_generate.convert import convert
    from tests.reference.musicgen import save_tiny_musicgen

    src = save_tiny_musicgen(work / "tiny-src")
    return convert(str(src), work / "tiny", force=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model-dir", type=Path, default=None, help="a converted MusicGen folder (default: tiny)"
    )
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=0.5, help="seconds of audio per job")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="server-load-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or build_tiny(work)
        with start_tiny_server(model_dir, work / "out", work / "server.log") as (proc, url):
            result = run_load(url, proc.pid, args.jobs, args.clients, args.seconds)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import device_line

    text = f"## mlx-audio-server load test\n\n{device_line()}\n\n{result.table()}\n"
    if result.errors:
        text += "\nErrors:\n" + "\n".join(f"- {e}" for e in result.errors[:20]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
