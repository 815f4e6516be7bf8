"""Stable Audio 3, ours (MLX) beside Stability's MLX runtime and the PyTorch original: whole clip, real sizes,
random weights.

    python bench/stable_audio_3.py --models small --seconds-small 10,30,120 --batches 1,4 \
        --peer-dir PEER --ref-dir REF --out sa3.md
    python bench/stable_audio_3.py --models medium --seconds-medium 380 --batches 1 \
        --peer-dir PEER --ref-dir REF
    python bench/stable_audio_3.py --tiny                       # a smoke test of the script (CPU, ~2 min)

Random weights cost what trained ones do. Every implementation gets the same sizes (README §5 of the
reference notes: small = DiT 1024 x 20 x 16 heads + SAME-S, medium = differential DiT 1536 x 24 x 24 heads +
SAME-L, T5Gemma b-b encoder 12 x 768, 256 prompt tokens), the same clip length in latents (`--headroom 0`, the
default: ceil(seconds * 44100 / 4096) latents, even, as the MLX runtime generates) and the same fixed prompt
token ids (tokenization is bypassed: ours through a stand-in tokenizer object, the MLX runtime by calling its
encoder on the ids, the PyTorch original through its pre-tokenized conditioning path): the bench measures
compute. Whole clip = text encoder + conditioning + every sampler step (ping-pong, 8 steps, cfg 1: the
post-trained default; `--cfg 7` adds runs with CFG 7 + APG as for -base checkpoints) + the SAME decode + the
copy to the host, after one warm-up generation of the same shape. Models are built before the clock starts
(loading is not timed).
Peak memory: MLX `mx.get_peak_memory()` over the timed generation (weights included: every model resident);
torch `max_memory_allocated()` on CUDA, peak RSS growth on CPU.

- ours: `StableAudio3` over `SA3Model` (DiT + T5Gemma in `--dtype`, SAME in `--same-dtype`, default float32),
  `-q` quantizes the DiT (4-bit, group 64: the family's QuantizeSpec, as `convert -q`). Peak memory by stage
  on a converted folder (lazy weights, `low_memory`): bench/sa3_memory.py.
- mlx-runtime: `optimized/mlx/models/defs/*` (`--peer-dir`), chained as `scripts/sa3_mlx.py` does
  (bench/sa3_peer.py).
- torch: `stable_audio_3` (`--ref-dir`) `StableAudioModel.generate`, fp16 on CUDA (its from_pretrained's
  model_half), float32 on CPU; T5Gemma written at real size with transformers to a temp folder (bf16, as
  bundled).
- diffusers: `StableAudio3Pipeline` (medium only: diffusers has no SAME-S), when diffusers imports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import (
    Report,
    log,
    mlx_device,
    mx,
    mx_dtype,
    mx_free,
    mx_peak_gb,
    mx_reset_mem,
    mx_sync,
    parse_list,
)
from sa3_peer import (
    DEFAULT_SECONDS,
    TINY_SECONDS,
    latents_for,
    prompt_ids,
    randomize_mlx,
    sa3_config,
    t5gemma_config,
)

# ---------------------------------------------------------------------------------------------------- ours


class FixedTokens:
    """Stand-in for StableAudio3's `TextTokenizers`: every prompt becomes the fixed ids of `prompt_ids`."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, cid: str, texts: list[str]) -> tuple[mx.array, mx.array]:
        ids, mask = prompt_ids(len(texts), self.vocab)
        return mx.array(ids), mx.array(mask)


def build_ours(name: str, dtype: str, tiny: bool, quantize: bool, chunked: bool, same_dtype: str = "float32"):
    from mlx_audio_generate.quantize import quantize_model
    from mlx_audio_generate.stable_audio_3.family import FAMILY
    from mlx_audio_generate.stable_audio_3.full_model import SA3Model
    from mlx_audio_generate.stable_audio_3.generate import StableAudio3, same_dtype_for

    cfg, t5 = sa3_config(name, tiny, chunked=chunked), t5gemma_config(tiny)
    model = SA3Model(cfg, t5)
    dt = mx_dtype(dtype)
    # SAME in `same_dtype` as StableAudio3.from_converted loads it (float32 unless asked; auto: fp16 on CUDA)
    same_dt = same_dtype_for(None if same_dtype == "auto" else same_dtype)
    randomize_mlx(model, lambda k: same_dt if k.startswith("same.") else dt)
    if quantize:
        quantize_model(model, FAMILY.quantize, 4, 64)
        mx.eval(model.parameters())
    return StableAudio3(model, FixedTokens(t5["vocab_size"]), {"model_config": cfg, "t5gemma": t5})


def run_ours(m, batch: int, seconds: float, steps: int, cfg: float, headroom: float) -> dict:
    marks: dict[str, float] = {}

    def on_stage(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, time.perf_counter())

    mx_sync()
    t0 = time.perf_counter()
    audio = m.generate(
        ["a prompt"] * batch, seconds=seconds, seed=0, on_stage=on_stage, steps=steps, cfg_scale=cfg,
        apg_scale=1.0, sampler="pingpong", headroom_seconds=headroom,
    )  # fmt: skip
    t3 = time.perf_counter()
    assert audio.shape[0] == batch
    return {
        "total": t3 - t0, "text": marks["generate"] - t0, "dit": marks["decode"] - marks["generate"],
        "vae": t3 - marks["decode"], "finite": bool(np.isfinite(audio).all()),
    }  # fmt: skip


# -------------------------------------------------------------------------------------------------- main


IMPLS = ("ours", "mlx-runtime", "torch", "diffusers")


def label(impl: str, args, torch_dev: str | None = None) -> str:
    if impl == "ours":
        same = "" if args.same_dtype == "float32" else f", SAME {args.same_dtype}"
        return f"ours MLX {args.dtype}" + (" + 4-bit DiT" if args.quantize else "") + same
    if impl == "mlx-runtime":
        local = ", fp16 local cond" if args.peer_fp16_local else ""
        return f"Stability MLX runtime (DiT {args.peer_dit_dtype}{local}, T5Gemma fp16, SAME fp32)"
    dev = torch_dev or "?"
    return f"stable_audio_3 torch ({dev})" if impl == "torch" else f"diffusers StableAudio3Pipeline ({dev})"


def build(impl: str, name: str, args):
    if impl == "ours":
        return build_ours(name, args.dtype, args.tiny, args.quantize, args.chunked_decode, args.same_dtype)
    import sa3_peer  # noqa: PLC0415 (torch and the peers' code only load when asked for)

    if impl == "mlx-runtime":
        return sa3_peer.MLXRuntime(name, args.tiny, args.peer_dir, args.peer_dit_dtype, args.peer_fp16_local)
    if impl == "torch":
        return sa3_peer.TorchReference(name, args.tiny, args.ref_dir, args.chunked_decode, args.ref_flex)
    return sa3_peer.DiffusersPipeline(name, args.tiny)


def run(impl: str, m, batch: int, seconds: float, cfg: float, args) -> dict:
    if impl == "ours":
        mx_reset_mem()
        r = run_ours(m, batch, seconds, args.steps, cfg, args.headroom)
        r["mem"] = mx_peak_gb()
        return r
    if impl == "mlx-runtime":
        mx_reset_mem()
        r = m.generate(batch, seconds, args.steps, cfg)
        r["mem"] = mx_peak_gb()
        return r
    if impl == "torch":
        return m.generate(batch, seconds, args.steps, cfg, args.headroom)
    return m.generate(batch, seconds, args.steps, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,medium")
    ap.add_argument("--seconds-small", default=None, help="clip lengths of small (default 10,30,120)")
    ap.add_argument("--seconds-medium", default=None, help="clip lengths of medium (default 380)")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--impls", default=",".join(IMPLS), help="comma list of " + ", ".join(IMPLS))
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="ours")
    ap.add_argument("-q", "--quantize", action="store_true", help="ours: 4-bit DiT (group 64)")
    ap.add_argument("--same-dtype", default="float32", choices=["float32", "float16", "bfloat16", "auto"],
                    help="ours: the SAME decode's precision (auto: float16 on MLX-CUDA, as the reference "
                         "decodes with CUDA; float32 elsewhere)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cfg", type=float, default=None, help="also run this CFG scale (with APG), e.g. 7")
    ap.add_argument("--headroom", type=float, default=0.0,
                    help="ours / torch headroom seconds (0: the MLX runtime's length; 6: the reference's "
                         "default duration_padding_sec)")  # fmt: skip
    ap.add_argument(
        "--chunked-decode",
        action="store_true",
        help="ours / torch: set the config's pretransform.chunked (128-latent windows)",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="timed runs per cell after the warm-up (best kept)"
    )
    ap.add_argument(
        "--peer-dir",
        default=None,
        help="Stability's optimized/mlx folder or its models/defs (default: ../shared/reference)",
    )
    ap.add_argument(
        "--ref-dir",
        default=None,
        help="the folder holding stable_audio_3/ (default: ../shared/reference/stable-audio-3)",
    )
    ap.add_argument(
        "--peer-dit-dtype",
        default="fp16",
        choices=["fp16", "fp32"],
        help="the MLX runtime's --dit-dtype (its T5Gemma is fp16 and its decoder fp32 always)",
    )
    ap.add_argument(
        "--peer-fp16-local",
        action="store_true",
        help="cast the MLX runtime's float32 zero local condition to its DiT dtype: shows its "
        "intended fp16 DiT (as released its DiT computes in float32 after block 0's add)",
    )
    ap.add_argument("--ref-flex", default="auto", choices=["auto", "on", "off"],
                    help="torch SAME-L sliding window through the compiled flex attention (auto: on "
                         "with CUDA, the reference's default; off: its chunked-halo SDPA)")  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of this script")
    ap.add_argument("--out")
    args = ap.parse_args()
    impls = [i for i in parse_list(args.impls) if i != "none"]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"unknown --impls {bad} (choose from {', '.join(IMPLS)})")
    rep = Report(f"Stable Audio 3 ({args.dtype}{', TINY models' if args.tiny else ''})", args.out)
    cfgs = [1.0] + ([args.cfg] if args.cfg not in (None, 1.0) else [])
    batches = parse_list(args.batches, int)
    torch_dev = None
    if any(i in ("torch", "diffusers") for i in impls):
        try:
            import torch

            torch_dev = (
                "CUDA fp16" if torch.cuda.is_available() else f"CPU fp32, {torch.get_num_threads()} threads"
            )
        except ImportError:
            pass
    for name in parse_list(args.models):
        given = args.seconds_small if name == "small" else args.seconds_medium
        seconds = parse_list(given or (TINY_SECONDS if args.tiny else DEFAULT_SECONDS)[name], float)
        res: dict[tuple, dict] = {}
        notes: list[str] = []
        for impl in impls:
            if impl == "diffusers" and name != "medium":
                continue  # diffusers has no SAME-S
            log(f"== {name}: {impl}")
            try:
                t0 = time.perf_counter()
                m = build(impl, name, args)
                log(f"   built in {time.perf_counter() - t0:.1f} s")
            except Exception as e:  # keep the other implementations
                notes.append(f"{impl}: not run ({type(e).__name__}: {str(e)[:200]})")
                log(notes[-1])
                continue
            for cfg in cfgs:
                for s in seconds:
                    for b in batches:
                        try:
                            run(impl, m, b, s, cfg, args)  # warm-up: compiles, caches kernels
                            best = None
                            for _ in range(args.repeats):
                                r = run(impl, m, b, s, cfg, args)
                                best = r if best is None or r["total"] < best["total"] else best
                        except Exception as e:
                            notes.append(f"{impl} {s:g} s batch {b} cfg {cfg:g} failed: {type(e).__name__}: "
                                         f"{str(e)[:200]}")  # fmt: skip
                            log(notes[-1])
                            continue
                        res[(impl, cfg, s, b)] = best
                        log(f"   {s:g} s batch {b} cfg {cfg:g}: {best}")
            del m
            mx_free()
            if impl in ("torch", "diffusers"):
                from common import torch_free

                torch_free()
        rows = []
        cap = sa3_config(name)["sample_size"] // 4096
        for cfg in cfgs:
            for s in seconds:
                for b in batches:
                    ours = res.get(("ours", cfg, s, b))
                    for impl in impls:
                        r = res.get((impl, cfg, s, b))
                        if r is None:
                            continue
                        lat = latents_for(s, args.headroom if impl in ("ours", "torch") else 0.0, cap)
                        speed = None if ours is None or impl == "ours" else r["total"] / ours["total"]
                        rows.append([
                            f"{s:g} s x{b}, cfg {cfg:g}", label(impl, args, torch_dev), lat, r.get("text"),
                            r.get("dit"), r.get("vae"), r["total"], b * s / r["total"], r["mem"],
                            None if speed is None else f"{speed:.2f}x",
                        ])  # fmt: skip
        head = ["clip", "implementation", "latents", "text (s)", "sampling (s)", "decode (s)",
                "whole clip (s)", "audio s / s", "peak mem (GB)", "ours faster by"]  # fmt: skip
        note = (
            f"{name}: {args.steps} ping-pong steps; cfg > 1 runs use APG (diffusers: plain CFG). "
            "'ours faster by' = that implementation's whole-clip time / ours. "
            + ("Non-finite audio from ours: " + ", ".join(f"{k[2]:g}s x{k[3]}" for k, v in res.items()
                                                         if k[0] == "ours" and not v.get("finite", True))
               if any(k[0] == "ours" and not v.get("finite", True) for k, v in res.items()) else "")
        )  # fmt: skip
        rep.table(head, rows, note=note, key=name)
        for n in notes:
            rep.para(f"- {n}")
    rep.para(
        f"MLX device: {mlx_device()}. Peak memory: MLX `mx.get_peak_memory()` during the timed generation "
        "(all weights resident, both MLX implementations); torch CUDA `max_memory_allocated()`, CPU peak RSS "
        "growth (weights built before the run not counted)."
    )


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
