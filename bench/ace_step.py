"""ACE-Step 1.5 text2music, ours (MLX) beside upstream's PyTorch pipeline, upstream's MLX path and diffusers'
AceStepPipeline: whole songs, real sizes, random weights, one process.

    python bench/ace_step.py --device cuda --cases turbo-30,turbo-120,turbo-240,base-30 --batches 1,4 \
        --ref-dir REF            # REF: a copy of ../shared/reference/ace-step-1.5/upstream-6d467e4
    python bench/ace_step.py --tiny                  # tiny configs: a smoke test of the script (CPU, ~1 min)
    python bench/ace_step.py --size small --cases turbo-10 --batches 1 --peers upstream-mlx   # CPU comparison

Weights: random, written once in the released layout (bench/ace_weights.py: 2B turbo / base DiT,
Qwen3-Embedding-0.6B, the 48 kHz Oobleck VAE; sizes from the reference README §6.2) under --work-dir and
reused by later runs; ours is our converter's folder of them (`AceStep.from_pretrained`), the peers load the
same files as upstream does. Random weights cost what trained ones do.
Every implementation gets the same fixed token ids (--text-tokens / --lyric-tokens: a caption with metadata
and a song's lyrics in Qwen tokens; tokenization itself is bypassed), the same song length in latents
(25 per second, at least 128), shift 3, ODE Euler, DCW off; turbo 8 steps, base 32 steps with CFG (APG)
guidance 7 (--turbo-steps / --base-steps / --guidance). Whole song = text encoder + condition encoder +
every DiT step + VAE decode + normalisation + copy to the host, timed after one warm-up generation of the
same shape (best of --repeats). Models are built before the clock starts (loading is not timed).
Dtypes: ours as converted (bf16, the released dtype, on CUDA; float32 on a CPU, where MLX's bf16 matmul
has no BLAS path; --dtype chooses) with the VAE in float32
(as `from_converted` loads it); `-q` adds ours with a 4-bit DiT (group 64, the family's QuantizeSpec as
`convert -q 4`); upstream PyTorch in the handler's dtype (CUDA bf16, CPU fp32, VAE likewise); upstream MLX
DiT and VAE in float32 (its converters; ACESTEP_MLX_VAE_FP16=1 for its fp16 VAE), its torch conditioning
in the handler's dtype; diffusers bf16 on CUDA, fp32 on CPU.
Peak memory: MLX `mx.get_peak_memory()` during the timed generation (all weights resident); torch CUDA
`max_memory_allocated()` (weights included), CPU peak RSS growth (weights not included); upstream MLX = its
MLX peak + its torch peak.
Each implementation runs in its own try/except (its error goes in the table) under --timeout seconds
(checked between generations and by an alarm). Results: a markdown table and JSON (--out PREFIX:
PREFIX.md, PREFIX.json; default bench/results/<date>-<device>/ace_step[_<size>]).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    DATE,
    ROOT,
    Report,
    device_line,
    log,
    mx,
    mx_free,
    mx_peak_gb,
    mx_reset_mem,
    mx_sync,
    parse_list,
)

IMPLS = ("ours", "ours-q4", "upstream-torch", "upstream-mlx", "diffusers")
PEERS = IMPLS[2:]


class PeerTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise PeerTimeout("--timeout reached")


def parse_cases(text: str, batches: list[int]) -> list[tuple[str, float, int]]:
    """'turbo-30,base-30x4' -> [(variant, seconds, batch)]; a case without xB runs every --batches."""
    out = []
    for c in parse_list(text):
        try:
            variant, rest = c.split("-", 1)
            secs, _, b = rest.partition("x")
            bs = [int(b)] if b else batches
            if variant not in ("turbo", "base") or float(secs) <= 0:
                raise ValueError
        except ValueError:
            raise SystemExit(f"bad case {c!r}: VARIANT-SECONDS[xBATCH], VARIANT turbo or base") from None
        out += [(variant, float(secs), x) for x in bs]
    return out


# ---------------------------------------------------------------------------------------------------- ours


class Ours:
    def __init__(self, folder: Path, tokens, quantize: bool):
        from mlx_audio_generate.ace_step.family import FAMILY
        from mlx_audio_generate.ace_step.generate import AceStep
        from mlx_audio_generate.quantize import quantize_model

        self.m = AceStep.from_pretrained(folder)
        self.m.tokenizer = tokens  # the fixed ids every implementation gets
        if quantize:
            quantize_model(self.m.model, FAMILY.quantize, 4, 64)
            mx.eval(self.m.model.parameters())
        dt = str(self.m.model.dit.proj_in.weight.dtype).removeprefix("mlx.core.")
        self.label = f"ours MLX (DiT + text {dt}{', 4-bit DiT' if quantize else ''}, VAE float32)"
        self.notes: list[str] = []

    def generate(self, batch: int, seconds: float, steps: int, guidance: float) -> dict:
        marks: dict[str, float] = {}

        def on_stage(stage: str, done: int, total: int) -> None:
            marks.setdefault(stage, time.perf_counter())

        kw = {} if self.m.model.is_turbo else {"guidance_scale": guidance}
        mx_reset_mem()
        mx_sync()
        t0 = time.perf_counter()
        audio = self.m.generate(
            ["a prompt"] * batch,
            seconds=seconds,
            seed=list(range(batch)),
            on_stage=on_stage,
            steps=steps,
            shift=3.0,
            **kw,
        )
        t3 = time.perf_counter()
        return {
            "total": t3 - t0,
            "text": marks["generate"] - t0,
            "dit": marks["decode"] - marks["generate"],
            "vae": t3 - marks["decode"],
            "mem": mx_peak_gb(),
            "finite": bool(np.isfinite(audio).all()),
            "frames": self.m.latent_frames(seconds),
        }


# ---------------------------------------------------------------------------------------------------- main


def build(impl: str, variant: str, args, ckpt: Path, tokens):
    import ace_peer
    from ace_weights import convert_ours

    if impl in ("ours", "ours-q4"):
        return Ours(convert_ours(ckpt, variant, args.dtype), tokens, impl == "ours-q4")
    if impl == "upstream-torch":
        return ace_peer.UpstreamTorch(ckpt, variant, args.ref_dir, args.device, tokens)
    if impl == "upstream-mlx":
        return ace_peer.UpstreamMLX(
            ckpt, variant, args.ref_dir, args.device, tokens, args.upstream_mlx_compile
        )
    return ace_peer.DiffusersAce(ckpt, variant, args.device, tokens)


def default_out(args) -> str:
    dev = "gpu" if args.device == "cuda" else "cpu"
    return str(
        ROOT
        / "bench"
        / "results"
        / f"{DATE}-{dev}"
        / ("ace_step" + ("" if args.size == "real" else f"_{args.size}"))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cases",
        default="turbo-30,turbo-120,turbo-240,base-30",
        help="VARIANT-SECONDS[xBATCH], VARIANT turbo or base (default %(default)s)",
    )
    ap.add_argument("--batches", default="1,4", help="batch sizes of a case without xBATCH")
    ap.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="MLX gpu (CUDA) + torch cuda, or CPU"
    )
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)} (or none)")
    ap.add_argument("--no-ours", action="store_true", help="peers only")
    ap.add_argument("-q", "--quantize", action="store_true", help="also ours with a 4-bit DiT")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float16", "bfloat16", "float32"],
        help="convert ours to this dtype (default: the stored bf16 on cuda, float32 on cpu)",
    )
    ap.add_argument(
        "--size", default="real", choices=["real", "small", "tiny"], help="model sizes (ace_weights.py)"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="= --size tiny, 5 s songs, batch 1, <= 4 base steps: a smoke test"
    )
    ap.add_argument("--turbo-steps", type=int, default=8)
    ap.add_argument("--base-steps", type=int, default=32)
    ap.add_argument("--guidance", type=float, default=7.0, help="base's CFG (APG) scale")
    ap.add_argument("--text-tokens", type=int, default=64, help="text prompt length in tokens")
    ap.add_argument("--lyric-tokens", type=int, default=320, help="lyric prompt length in tokens")
    ap.add_argument(
        "--repeats", type=int, default=1, help="timed runs per case after the warm-up (best kept)"
    )
    ap.add_argument(
        "--timeout", type=float, default=240.0, help="seconds per implementation (build included)"
    )
    ap.add_argument(
        "--ref-dir", default=None, help="upstream's upstream-6d467e4 folder (default ../shared/reference)"
    )
    ap.add_argument(
        "--upstream-mlx-compile", action="store_true", help="upstream MLX DiT step under mx.compile"
    )
    ap.add_argument("--work-dir", default="/tmp/ace_bench_weights", help="where the random checkpoints live")
    ap.add_argument("--out", default=None, help="output prefix (.md and .json)")
    args = ap.parse_args()
    if args.tiny:
        args.size = "tiny"
        if args.cases == ap.get_default("cases"):
            args.cases = "turbo-5,base-5"  # 128 latents, the shortest song
        if args.batches == ap.get_default("batches"):
            args.batches = "1"
        args.base_steps = min(args.base_steps, 4)
    if args.dtype is None and args.device == "cpu":
        args.dtype = "float32"  # MLX's CPU bf16 matmul has no BLAS path (measured ~40x slower than fp32)
    mx.set_default_device(mx.gpu if args.device == "cuda" else mx.cpu)
    peers = [p for p in parse_list(args.peers) if p != "none"]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise SystemExit(f"unknown --peers {bad} (choose from {', '.join(PEERS)})")
    impls = ([] if args.no_ours else ["ours"] + (["ours-q4"] if args.quantize else [])) + peers
    cases = parse_cases(args.cases, parse_list(args.batches, int))
    out = Path(args.out or default_out(args))
    rep = Report(f"ACE-Step 1.5 ({args.size} sizes{', ' + args.device})", str(out) + ".md")

    from ace_weights import SIZES, FixedTokens, build_checkpoints

    t0 = time.perf_counter()
    try:
        ckpt = build_checkpoints(
            Path(args.work_dir), args.size, args.ref_dir, sorted({v for v, _, _ in cases})
        )
    except Exception as e:
        rep.para(f"could not write the random checkpoints: {type(e).__name__}: {e}")
        raise SystemExit(1) from None
    setup_s = time.perf_counter() - t0
    tokens = FixedTokens(SIZES[args.size]["qwen"]["vocab_size"], args.text_tokens, args.lyric_tokens)
    results: list[dict] = []
    notes: list[str] = []
    if "diffusers" in impls:  # often absent (the GPU machine): a printed reason, not a failed row per case
        try:
            import diffusers  # noqa: F401
        except ImportError as e:
            impls.remove("diffusers")
            notes.append(f"diffusers: skipped, not importable ({e})")
            log(notes[-1])
    labels: dict[str, str] = {}
    signal.signal(signal.SIGALRM, _alarm)
    for impl in impls:
        for variant in sorted({v for v, _, _ in cases}, key=("turbo", "base").index):
            mine = [c for c in cases if c[0] == variant]
            steps = args.turbo_steps if variant == "turbo" else args.base_steps
            log(f"== {impl} {variant}")
            start = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            m = None
            try:
                m = build(impl, variant, args, ckpt, tokens)
                labels[impl] = m.label
                notes += [n for n in m.notes if n not in notes]
                log(f"   built in {time.perf_counter() - start:.1f} s: {m.label}")
                for _, secs, batch in mine:
                    row = {
                        "impl": impl,
                        "variant": variant,
                        "seconds": secs,
                        "batch": batch,
                        "steps": steps,
                        "guidance": None if variant == "turbo" else args.guidance,
                    }
                    try:
                        m.generate(batch, secs, steps, args.guidance)  # warm-up: kernels, caches, compiles
                        best = None
                        for _ in range(args.repeats):
                            r = m.generate(batch, secs, steps, args.guidance)
                            best = r if best is None or r["total"] < best["total"] else best
                        row.update(best)
                        log(f"   {variant} {secs:g} s x{batch}: {best['total']:.3f} s, {best['mem']:.2f} GB")
                    except PeerTimeout:
                        raise
                    except Exception as e:  # this case fails, the next may not (e.g. out of memory)
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        log(f"   {variant} {secs:g} s x{batch} failed: {row['error']}")
                    results.append(row)
            except Exception as e:  # the implementation (build or timeout): its remaining cases are skipped
                err = f"{type(e).__name__}: {str(e)[:300]}"
                done = {
                    (r["seconds"], r["batch"])
                    for r in results
                    if r["impl"] == impl and r["variant"] == variant
                }
                for _, secs, batch in mine:
                    if (secs, batch) not in done:
                        results.append(
                            {
                                "impl": impl,
                                "variant": variant,
                                "seconds": secs,
                                "batch": batch,
                                "steps": steps,
                                "error": err,
                            }
                        )
                log(f"   {impl} {variant}: {err}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            del m
            mx_free()
            if impl not in ("ours", "ours-q4"):
                try:
                    from common import torch_free

                    torch_free()
                except ImportError:
                    pass
    write(rep, out, args, cases, impls, results, labels, notes, setup_s)


def write(rep, out: Path, args, cases, impls, results, labels, notes, setup_s) -> None:
    by = {(r["impl"], r["variant"], r["seconds"], r["batch"]): r for r in results}
    head = [
        "song",
        "implementation",
        "latents",
        "text (s)",
        "DiT (s)",
        "decode (s)",
        "whole song (s)",
        "audio s / s",
        "peak mem (GB)",
        "ours faster by",
    ]
    rows = []
    for variant, secs, batch in cases:
        ours = by.get(("ours", variant, secs, batch))
        for impl in impls:
            r = by.get((impl, variant, secs, batch))
            if r is None:
                continue
            name = labels.get(impl, impl)
            song = f"{variant} {secs:g} s x{batch}"
            if "error" in r:
                rows.append([song, name, "–", "–", "–", "–", f"failed: {r['error'][:120]}", "–", "–", "–"])
                continue
            speed = None
            if ours is not None and "error" not in ours and impl not in ("ours", "ours-q4"):
                speed = f"{r['total'] / ours['total']:.2f}x"
            rows.append(
                [
                    song,
                    name,
                    r.get("frames"),
                    r.get("text"),
                    r.get("dit"),
                    r.get("vae"),
                    r["total"],
                    batch * secs / r["total"],
                    r["mem"],
                    speed,
                ]
            )
    note = (
        f"turbo {args.turbo_steps} steps; base {args.base_steps} steps, CFG (APG) {args.guidance:g} "
        f"(one batched DiT call of cond + null per step); shift 3; prompts {args.text_tokens} text + "
        f"{args.lyric_tokens} lyric tokens. 'ours faster by' = that implementation's whole-song time / "
        "ours. diffusers: text = its text + condition encoder calls, decode = its whole-song VAE decode. "
        f"Random checkpoints ready in {setup_s:.0f} s (written or reused)."
    )
    rep.table(head, rows, note=note)
    for n in notes:
        rep.para(f"- {n}")
    bad = [
        f"{r['impl']} {r['variant']} {r['seconds']:g}s x{r['batch']}"
        for r in results
        if r.get("finite") is False
    ]
    if bad:
        rep.para("- non-finite audio (random weights): " + ", ".join(bad))
    body = {
        "date": DATE,
        "device": device_line(),
        "args": vars(args),
        "labels": labels,
        "notes": notes,
        "results": results,
    }
    path = Path(str(out) + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    rep.para(f"results: {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
