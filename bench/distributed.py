"""Batch jobs over MLX distributed ranks: 1 rank vs N ranks (`mlx.launch -n N --backend ring`) on this host.

    python bench/distributed.py                              # tiny + mid random MusicGen, 1 vs 2 ranks
    python bench/distributed.py --sizes mid --items 8 --seconds 1 --out dist.md
    python bench/distributed.py --weights-dir converted/musicgen-small --items 8   # a real converted model
    python bench/distributed.py --backend nccl --ranks 1,2,4 --weights-dir ...     # a multi-GPU Linux box

Each configuration runs the whole CLI job (`mlx-audio-generate --prompts-file ...` into a fresh folder):
1 rank is a plain process (no launcher: the same job on one machine), N ranks go through `mlx.launch`.
Wall = the whole command (process start, model load on each rank, generation, gather, manifest);
generation = the slowest rank's summed `seconds_taken` from the manifest (load and start-up excluded).
items/min = items / time * 60; speedup = T(first --ranks entry) / T(N ranks); efficiency = speedup / N.

Models: `tiny` is the test suite's random MusicGen (tiny T5/EnCodec/decoder: per-item overhead dominates);
`mid` keeps the tiny T5 and EnCodec but has a 12-layer, 512-wide decoder (~40M parameters), so the
autoregressive LM dominates as in the real checkpoints. Both are built with transformers and converted once
into `--work` (default: the system temp folder). The ranks load the optimised BLAS first (Linux CPU), as
the other benches do, with
`--threads` BLAS threads each (default: the host's cores split between its ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Report, log, parse_list

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RANK_CMD = (
    "import sys; from mlx_audio_generate import _blas; _blas.load_blas(); "
    "from mlx_audio_generate.cli.batch import main; sys.argv[0] = 'mlx-audio-generate'; main()"
)


def build_model(size: str, work: Path) -> Path:
    """A converted random MusicGen folder of `size` (cached in `work`)."""
    folder = work / f"musicgen-{size}"
    if (folder / "model.safetensors").exists():
        return folder
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from mlx_audio_generate.convert import convert
    from tests.reference.musicgen import save_tiny_musicgen, tiny_configs
    from tests.reference.tokenizer import save_tiny_t5_tokenizer

    src = work / f"src-{size}"
    shutil.rmtree(src, ignore_errors=True)
    if size == "tiny":
        save_tiny_musicgen(src)
    else:
        t5, encodec, decoder = tiny_configs()
        for k, v in dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, ffn_dim=2048).items():
            setattr(decoder, k, v)
        torch.manual_seed(0)
        model = MusicgenForConditionalGeneration(
            MusicgenConfig(text_encoder=t5, audio_encoder=encodec, decoder=decoder)
        ).eval()
        with torch.no_grad():  # codebooks are zero buffers at init: random ones give non-silent audio
            for name, buf in model.named_buffers():
                if name.endswith("codebook.embed"):
                    buf.copy_(torch.randn(buf.shape))
        model.save_pretrained(src)
        save_tiny_t5_tokenizer(src)
    convert(str(src), folder, force=True)
    shutil.rmtree(src, ignore_errors=True)
    return folder


def free_port(n: int) -> int:
    """A port p with p .. p + n - 1 free (the ring backend listens on one port per rank)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


def run_job(
    weights: Path, jobs: Path, out: Path, ranks: int, batch: int, backend: str, threads: int
) -> tuple[float, list]:
    shutil.rmtree(out, ignore_errors=True)
    args = ["--weights-dir", str(weights), "--prompts-file", str(jobs), "--output-dir", str(out), "--quiet"]
    args += ["--batch-size", str(batch)]
    cmd = [sys.executable, "-c", RANK_CMD, *args]
    # BLAS threads per rank: the ranks of one host share its cores (oversubscribed BLAS threads spin)
    env_vars = [f"{v}={threads}" for v in THREAD_VARS] if threads > 0 else []
    env = dict(os.environ, **dict(e.split("=") for e in env_vars))
    if ranks > 1:
        launch = Path(sys.executable).with_name("mlx.launch")
        opts = ["-n", str(ranks), "--backend", backend]
        opts += ["-p", str(free_port(ranks))] if backend == "ring" else []
        opts += [x for e in env_vars for x in ("--env", e)]
        cmd = [str(launch), *opts, "--", *cmd]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    manifest = out / "manifest.jsonl"
    if r.returncode != 0 or not manifest.exists():
        raise RuntimeError(f"job failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return wall, [json.loads(line) for line in manifest.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,mid", help="random models to build: tiny, mid")
    ap.add_argument("--weights-dir", default=None, help="a converted folder instead of --sizes")
    ap.add_argument("--ranks", default="1,2", help="rank counts (1 = plain process)")
    ap.add_argument("--batch-sizes", default="1", help="--batch-size values")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds of audio per item")
    ap.add_argument("--backend", default="ring", help="mlx.launch backend (ring; nccl on CUDA)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mlx-audio-bench-distributed"))
    ap.add_argument(
        "--threads",
        default="auto",
        help="BLAS threads per rank: auto = cores // ranks (CPU), 0 = leave unset",
    )
    ap.add_argument("--out")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = work / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"prompt": f"song number {i}", "seconds": args.seconds}) + "\n"
            for i in range(args.items)
        )
    )
    models = {Path(args.weights_dir).name: Path(args.weights_dir)} if args.weights_dir else {}
    for size in [] if args.weights_dir else parse_list(args.sizes):
        log(f"building the {size} model")
        models[size] = build_model(size, work)

    rep = Report("Batch jobs over MLX distributed ranks", args.out)
    rep.para(
        f"{args.items} items x {args.seconds:g} s, MusicGen sampling defaults, backend {args.backend}; "
        "1 rank = plain process, N ranks = `mlx.launch -n N`; BLAS threads per rank: "
        f"{args.threads} ({os.cpu_count()} cores); load average before: {os.getloadavg()[0]:.2f}."
    )
    header = ["model", "batch", "ranks", "wall s", "items/min (wall)", "speedup", "efficiency"]
    header += ["gen s (slowest rank)", "items/min (gen)", "gen efficiency"]
    rows = []
    for name, weights in models.items():
        for batch in parse_list(args.batch_sizes, int):
            base = None
            for ranks in parse_list(args.ranks, int):
                log(f"{name}: batch {batch}, {ranks} rank(s)")
                threads = (
                    max(1, (os.cpu_count() or 1) // ranks) if args.threads == "auto" else int(args.threads)
                )
                wall, manifest = run_job(weights, jobs, work / "out", ranks, batch, args.backend, threads)
                assert len(manifest) == args.items and not any(r["skipped"] for r in manifest)
                per_rank: dict[int, float] = {}
                for r in manifest:
                    per_rank[r["rank"]] = per_rank.get(r["rank"], 0.0) + r["seconds_taken"]
                gen = max(per_rank.values())
                base = base or (wall, gen)
                speed, gspeed = base[0] / wall, base[1] / gen
                rows.append(
                    [name, batch, ranks, wall, args.items / wall * 60, speed, speed / ranks]
                    + [gen, args.items / gen * 60, gspeed / ranks]
                )
                rep.table(header, rows, key="main")
    shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
