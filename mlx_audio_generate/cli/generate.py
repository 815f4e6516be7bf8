"""`mlx-audio-generate`: text -> audio files with MusicGen or Stable Audio Open.

    mlx-audio-generate --model musicgen-small --prompt "lofi piano" --seconds 10

`--model` takes a short name (downloaded and converted once, then cached), a Hugging Face repo id, a folder
written by mlx-audio-convert, or a family name (`musicgen`, `stable_audio`) with `--weights-dir`. Several
`--prompt`s and `--n` variations run as batches on the device; each file records its prompt, model, seed
and settings. The flags map 1:1 to the Python API (`mlx_audio_generate.load(...).generate(...)`).
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path

from ..audio import check_output_path, loudness_normalize, write_audio
from ..errors import UserError
from ..progress import tqdm_stages
from .common import ArgumentParser, run_main

FAMILIES = ("musicgen", "stable_audio")
# family -> {argparse dest: default}; None defaults mean "the checkpoint's own default".
FAMILY_OPTIONS = {
    "musicgen": {
        "temperature": 1.0,
        "top_k": 250,
        "top_p": 0.0,
        "guidance_coef": 3.0,
        "melody": None,
        "audio_prompt": None,
        "extend_stride": None,
    },
    "stable_audio": {
        "steps": None,
        "cfg_scale": None,
        "sampler": None,
        "negative_prompt": None,
        "init_audio": None,
        "init_noise_level": None,
        "init_strength": None,
        "inpaint_audio": None,
        "mask_start": None,
        "mask_end": None,
    },
}
AUDIO_FILE_OPTIONS = ("melody", "audio_prompt", "init_audio", "inpaint_audio")


def setup_arg_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mlx-audio-generate", description="Generate audio from text on your own machine.")
    p.add_argument(
        "--model",
        required=True,
        help="a model name (musicgen-small, musicgen-melody, stable-audio-open-small, ...), a Hugging Face "
        "repo id, a converted folder, or musicgen / stable_audio together with --weights-dir",
    )
    p.add_argument("--prompt", action="append", default=None, help="text description (repeat for several)")
    p.add_argument(
        "--prompts-file",
        default=None,
        help="JSONL batch job with --output-dir (see README; mlx.launch ranks)",
    )
    p.add_argument(
        "--n", type=int, default=1, help="variations per prompt, each with its own seed (default 1)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="duration in seconds (default 5)")
    p.add_argument(
        "--output", default=None, help="output file (.wav/.flac/.ogg/.mp3); default: auto-named .wav"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed; variation i uses seed + i (default random)"
    )
    p.add_argument("--weights-dir", default=None, help="folder written by mlx-audio-convert")
    p.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="weights dtype when a model is converted on first use (default: the checkpoint's)",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow repos outside the supported list")
    p.add_argument(
        "--batch-size", type=int, default=4, help="clips generated together on the device (default 4)"
    )
    p.add_argument(
        "--normalize",
        nargs="?",
        type=float,
        const=-14.0,
        default=None,
        metavar="LUFS",
        help="normalise loudness (ITU-R BS.1770) to LUFS (default -14), true-peak safe",
    )
    p.add_argument("--metadata-json", action="store_true", help="also write <file>.json with the settings")
    g = p.add_argument_group("MusicGen")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    g.add_argument("--top-k", type=int, default=None, help="top-k candidates; 1 = greedy (default 250)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, 0 = off (default 0)")
    g.add_argument("--guidance-coef", type=float, default=None, help="classifier-free guidance (default 3.0)")
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
    g.add_argument("--negative-prompt", default=None, help="what to steer away from")
    g.add_argument("--init-audio", default=None, metavar="FILE", help="make a variation of this audio")
    g.add_argument(
        "--init-noise-level",
        type=float,
        default=None,
        help="how far from --init-audio (the reference's init_noise_level)",
    )
    g.add_argument(
        "--init-strength",
        type=float,
        default=None,
        help="0..1 alternative to --init-noise-level (1 = ignore the init audio)",
    )
    g.add_argument("--inpaint-audio", default=None, metavar="FILE", help="regenerate a region of this audio")
    g.add_argument(
        "--mask-start", type=float, default=None, metavar="SECONDS", help="inpainting region start"
    )
    g.add_argument("--mask-end", type=float, default=None, metavar="SECONDS", help="inpainting region end")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _check_generic(args) -> list[str]:
    """Checks that need no model; returns the prompts."""
    prompts = args.prompt or []
    if not prompts:
        raise UserError("--prompt is required; describe the audio you want, e.g. --prompt 'lofi piano'")
    for p in prompts:
        if not p.strip():
            raise UserError("--prompt is empty; describe the audio you want, e.g. --prompt 'lofi piano'")
    if not math.isfinite(args.seconds) or args.seconds <= 0:
        raise UserError(f"--seconds must be a positive number, got {args.seconds}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed must be in [0, 2^32), got {args.seed}")
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.normalize is not None and not (math.isfinite(args.normalize) and -70 <= args.normalize <= 0):
        raise UserError(f"--normalize takes a loudness in LUFS between -70 and 0, got {args.normalize}")
    return prompts


def _check_family(args, family: str) -> dict:
    """Reject the other family's flags, fill this family's defaults, check ranges and input files."""
    other = "stable_audio" if family == "musicgen" else "musicgen"
    given = [k for k in FAMILY_OPTIONS[other] if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        name = "Stable Audio" if other == "stable_audio" else "MusicGen"
        raise UserError(f"{flags}: {name} options, but --model is a {family} model")
    opts = {
        k: (d if getattr(args, k) is None else getattr(args, k)) for k, d in FAMILY_OPTIONS[family].items()
    }
    if family == "musicgen":
        if not math.isfinite(opts["temperature"]) or opts["temperature"] < 0:
            raise UserError(f"--temperature must be >= 0, got {opts['temperature']}")
        if opts["top_k"] < 1:
            raise UserError(f"--top-k must be >= 1, got {opts['top_k']}")
        if not 0.0 <= opts["top_p"] <= 1.0:
            raise UserError(f"--top-p must be in [0, 1], got {opts['top_p']}")
        if not math.isfinite(opts["guidance_coef"]) or opts["guidance_coef"] < 0:
            raise UserError(f"--guidance-coef must be >= 0, got {opts['guidance_coef']}")
        stride = opts["extend_stride"]
        if stride is not None:
            from ..musicgen.longform import DEFAULT_WINDOW

            if not math.isfinite(stride) or not 0 < stride < DEFAULT_WINDOW:
                raise UserError(
                    f"--extend-stride must be more than 0 and less than {DEFAULT_WINDOW:g} (the window), "
                    f"got {stride:g}"
                )
    else:
        if opts["steps"] is not None and opts["steps"] < 1:
            raise UserError(f"--steps must be >= 1, got {opts['steps']}")
        if opts["cfg_scale"] is not None and (not math.isfinite(opts["cfg_scale"]) or opts["cfg_scale"] < 0):
            raise UserError(f"--cfg-scale must be >= 0, got {opts['cfg_scale']}")
    for key in AUDIO_FILE_OPTIONS:
        if opts.get(key) is not None:
            _check_audio_file("--" + key.replace("_", "-"), opts[key])
    return opts


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


def auto_output_name(model: str, prompt: str, seed: int, taken: set[Path] | None = None) -> Path:
    """`<model>_<prompt-slug>_<seed>.wav` in the current folder, never overwriting an existing file."""
    model = re.sub(r"[^A-Za-z0-9.]+", "-", model).strip("-") or "audio"
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "audio"
    taken = taken or set()
    path = Path(f"{model}_{slug}_{seed}.wav")
    n = 1
    while path.exists() or path in taken:
        path = Path(f"{model}_{slug}_{seed}_{n}.wav")
        n += 1
    return path


def _output_paths(args, items: list[tuple[str, int]], label: str) -> list[Path]:
    if args.output:
        base = check_output_path(args.output)
        if len(items) == 1:
            return [base]
        return [
            check_output_path(base.with_name(f"{base.stem}_{i + 1}{base.suffix}")) for i in range(len(items))
        ]
    taken: set[Path] = set()
    paths = []
    for prompt, seed in items:
        paths.append(auto_output_name(label, prompt, seed, taken))
        taken.add(paths[-1])
    return paths


def _resolve(args) -> Path:
    """The converted folder to load (downloading and converting on first use of a name)."""
    from ..registry import family_of, resolve

    if args.weights_dir is not None:
        from ..converted import open_converted

        # with a weights folder, --model names the family (or a known model of it) the folder must hold
        family = family_of(args.model)
        if family is None:
            raise UserError(
                f"unknown --model '{args.model}' for --weights-dir; use musicgen or stable_audio "
                "(or a model name such as musicgen-small without --weights-dir)"
            )
        return open_converted(args.weights_dir, family)[0]
    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return resolve(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code, quiet=args.quiet)


def _main(argv: list[str] | None) -> int:
    import numpy as np

    raw = sys.argv[1:] if argv is None else argv
    if any(a == "--prompts-file" or a.startswith("--prompts-file=") for a in raw):
        # a JSONL batch job (sharded over mlx.launch ranks): its own flags (--output-dir, --format, ...)
        from .batch import main_from_generate

        return main_from_generate(raw)
    args = setup_arg_parser().parse_args(argv)
    prompts = _check_generic(args)
    base_seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
    # item k: prompt k // n, seed base + k (a prompt's variations side by side, every seed distinct)
    items = [(p, base_seed + k) for k, p in enumerate(p for p in prompts for _ in range(args.n))]
    label = Path(args.model).name if args.model not in FAMILIES else args.model
    paths = _output_paths(args, items, label)

    from ..registry import family_of

    if family_of(args.model) is not None:  # known family: check its flags before any download or load
        _check_family(args, family_of(args.model))
    t0 = time.perf_counter()
    folder = _resolve(args)
    from ..api import converted_family, load

    family = converted_family(folder)
    opts = _check_family(args, family)
    model = load(folder)
    outputs = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        what = "generating" if family == "musicgen" else "denoising"
        part = "" if len(items) == 1 else f" {start + 1}-{start + len(chunk)}/{len(items)}"
        # a separate bar per stage (the models report stages, the CLI draws them); none with --quiet
        bars = {"generate": what + part, "decode": "decoding" + part}
        audio = model.generate(
            [p for p, _ in chunk],
            seconds=args.seconds,
            seed=[s for _, s in chunk],
            on_stage=tqdm_stages(bars, args.quiet, units={"decode": "chunk"}),
            **opts,
        )
        for (prompt, seed), clip in zip(chunk, audio, strict=True):
            outputs.append((prompt, seed, clip))
    for path, (prompt, seed, clip) in zip(paths, outputs, strict=True):
        meta = {
            "prompt": prompt,
            "model": args.model,
            "family": family,
            "seed": seed,
            "seconds": args.seconds,
            "settings": {k: v for k, v in opts.items() if v is not None},
            "generator": "mlx-audio-generate",
        }
        if args.normalize is not None:
            clip, meta["loudness"] = loudness_normalize(clip, model.sample_rate, target_lufs=args.normalize)
        write_audio(path, clip, model.sample_rate, metadata=meta, sidecar=args.metadata_json)
        if not args.quiet:
            dur = clip.shape[-1] / model.sample_rate
            print(f"wrote {path} ({dur:.2f} s, {clip.shape[0]} ch, {model.sample_rate} Hz, seed {seed})")
    if not args.quiet:
        print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-generate"))
