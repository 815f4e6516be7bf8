"""`mlx-audio-generate`: text -> audio file with MusicGen or Stable Audio Open."""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

from ..audio import check_output_path, write_audio
from ..errors import UserError
from .common import ArgumentParser, run_main

FAMILIES = ("musicgen", "stable_audio")


def setup_arg_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mlx-audio-generate", description="Generate audio from text on your own machine.")
    p.add_argument("--model", required=True, help="musicgen or stable_audio")
    p.add_argument("--prompt", required=True, help="text description of the audio")
    p.add_argument("--seconds", type=float, default=5.0, help="duration in seconds (default 5)")
    p.add_argument("--output", default=None, help="output file (.wav/.flac/.ogg); default: auto-named .wav")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--weights-dir", default=None, help="folder written by mlx-audio-convert")
    g = p.add_argument_group("MusicGen")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    g.add_argument("--top-k", type=int, default=250, help="top-k candidates; 1 = greedy (default 250)")
    g.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass, 0 = off (default 0)")
    g.add_argument("--guidance-coef", type=float, default=3.0, help="classifier-free guidance (default 3.0)")
    g.add_argument("--melody", default=None, metavar="FILE", help="melody to follow (melody checkpoints)")
    g.add_argument(
        "--audio-prompt",
        default=None,
        metavar="FILE",
        help="audio to continue; --seconds is the total length",
    )
    g.add_argument(
        "--extend-stride",
        type=float,
        default=None,
        metavar="SECONDS",
        help="beyond the 30 s window, seconds added per extra window (default 18)",
    )
    g = p.add_argument_group("Stable Audio")
    g.add_argument("--steps", type=int, default=None, help="diffusion steps (default per checkpoint)")
    g.add_argument("--cfg-scale", type=float, default=None, help="CFG scale (default per checkpoint)")
    g.add_argument("--sampler", default=None, help="sampler (default per checkpoint)")
    g.add_argument("--negative-prompt", default="", help="what to steer away from")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _validate(args) -> None:
    if args.model not in FAMILIES:
        raise UserError(f"unknown --model '{args.model}'; use one of: {', '.join(FAMILIES)}")
    if not args.prompt.strip():
        raise UserError("--prompt is empty; describe the audio you want, e.g. --prompt 'lofi piano'")
    if not math.isfinite(args.seconds) or args.seconds <= 0:
        raise UserError(f"--seconds must be a positive number, got {args.seconds}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2^32), got {args.seed}")
    if args.model == "musicgen":
        if not math.isfinite(args.temperature) or args.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {args.temperature}")
        if args.top_k < 1:
            raise UserError(f"--top-k must be >= 1, got {args.top_k}")
        if not 0.0 <= args.top_p <= 1.0:
            raise UserError(f"--top-p must be in [0, 1], got {args.top_p}")
        if not math.isfinite(args.guidance_coef) or args.guidance_coef < 0:
            raise UserError(f"--guidance-coef must be >= 0, got {args.guidance_coef}")
        if args.extend_stride is not None:
            from ..musicgen.longform import DEFAULT_WINDOW

            if not math.isfinite(args.extend_stride) or not 0 < args.extend_stride < DEFAULT_WINDOW:
                raise UserError(
                    f"--extend-stride must be more than 0 and less than {DEFAULT_WINDOW:g} (the window), "
                    f"got {args.extend_stride:g}"
                )
        for flag, path in (("--melody", args.melody), ("--audio-prompt", args.audio_prompt)):
            if path is not None:
                _check_audio_file(flag, path)
    elif args.melody or args.audio_prompt or args.extend_stride is not None:
        raise UserError("--melody, --audio-prompt and --extend-stride are MusicGen options")
    if args.model != "musicgen":
        if args.steps is not None and args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        if args.cfg_scale is not None and (not math.isfinite(args.cfg_scale) or args.cfg_scale < 0):
            raise UserError(f"--cfg-scale must be >= 0, got {args.cfg_scale}")


def _check_audio_file(flag: str, path: str) -> None:
    """Fail before loading a model when an input audio file is missing or unreadable."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} file '{path}' does not exist")
    try:
        info = sf.info(str(p))
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{flag} file '{path}' is not audio that can be read ({msg})") from None
    if info.frames == 0:
        raise UserError(f"{flag} file '{path}' is empty")


def auto_output_name(model: str, prompt: str, seed: int) -> Path:
    """`<model>_<prompt-slug>_<seed>.wav` in the current folder, never overwriting an existing file."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "audio"
    path = Path(f"{model}_{slug}_{seed}.wav")
    n = 1
    while path.exists():
        path = Path(f"{model}_{slug}_{seed}_{n}.wav")
        n += 1
    return path


def _progress(total_hint: str, quiet: bool):
    """A tqdm bar fed by the generators' per-step callbacks (the CLI owns the bar, the models only yield)."""
    if quiet:
        return None
    from tqdm import tqdm

    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=total_hint, unit="step", file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return callback


def _main(argv: list[str] | None) -> int:
    import numpy as np

    args = setup_arg_parser().parse_args(argv)
    _validate(args)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % (2**32))
    output = (
        check_output_path(args.output) if args.output else auto_output_name(args.model, args.prompt, seed)
    )
    if args.weights_dir is None:
        raise UserError("--weights-dir is required: convert a checkpoint first with mlx-audio-convert")
    t0 = time.perf_counter()
    if args.model == "musicgen":
        from ..musicgen.generate import MusicGen

        model = MusicGen.from_pretrained(args.weights_dir)
        audio = model.generate(
            args.prompt,
            seconds=args.seconds,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            guidance_coef=args.guidance_coef,
            seed=seed,
            progress=_progress("generating", args.quiet),
            melody=args.melody,
            audio_prompt=args.audio_prompt,
            extend_stride=args.extend_stride,
        )[0]
    else:
        from ..stable_audio.generate import StableAudio

        model = StableAudio.from_pretrained(args.weights_dir)
        audio = model.generate(
            args.prompt,
            seconds=args.seconds,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            sampler=args.sampler,
            negative_prompt=args.negative_prompt,
            seed=seed,
            progress=_progress("denoising", args.quiet),
        )[0]
    write_audio(output, audio, model.sample_rate)
    if not args.quiet:
        dur = audio.shape[-1] / model.sample_rate
        print(
            f"wrote {output} ({dur:.2f} s, {model.sample_rate} Hz, seed {seed}) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-generate"))
