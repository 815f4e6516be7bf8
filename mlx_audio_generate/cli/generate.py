"""`mlx-audio-generate`: text -> audio files with any model family this tool has.

    mlx-audio-generate --model musicgen-small --prompt "lofi piano" --seconds 10

`--model` takes a short name (downloaded and converted once, then cached), a Hugging Face repo id, a folder
written by mlx-audio-convert, or a family name with `--weights-dir`. Several `--prompt`s and `--n` variations
run as batches on the device; each file records its prompt, model, seed and settings. The flags map 1:1 to
the Python API (`mlx_audio_generate.load(...).generate(...)`): each family's flags are built from its settings
schema (settings.py), which also checks them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import ArgumentParser, add_version_flag, interruptible_imports, refuse_gpu_less_rank, run_main

with interruptible_imports("mlx-audio-generate"):  # Ctrl-C while numpy & co load: one line, exit 130
    refuse_gpu_less_rank("mlx-audio-generate")  # before MLX (mlx.launch --backend nccl)
    from .. import registry
    from ..audio import LOUDNESS_RANGE, check_output_path, loudness_normalize, loudness_report, write_audio
    from ..batch import FORMATS as BATCH_FORMATS
    from ..errors import UserError
    from ..family import Family
    from ..progress import is_terminal, tqdm_stages
    from ..settings import Setting, check_prompts, check_seconds, check_seed, random_seed, variation_seeds
    from ..weights import remove_stale_temps

_ARG_TYPES = {"float": float, "int": int, "choice": str, "text": str, "file": str}
if TYPE_CHECKING:
    from ..converted import Converted

MAX_FILES = 10_000  # files one run may name up front (a bigger --n is a typo, and would take ages to list)


def flag_help(st: Setting, choices: tuple[str, ...] | None = None) -> str:
    choices = choices or st.choices
    if st.kind == "choice" and choices and len(choices) <= 30:  # a long list (languages) stays in the docs
        st = st.for_checkpoint(help=f"{st.help} One of: {', '.join(choices)}.")
    if st.kind == "file" or st.name.endswith("_prompt") and st.kind == "text":
        return st.help
    default = (
        "per checkpoint"
        if st.default is None
        else f"{st.default:g}"
        if isinstance(st.default, float)
        else st.default
    )
    return f"{st.help} (default {default})" if default != "" else st.help


def add_family_flags(p: ArgumentParser, scope: str | None = None, heading: str = "{label}") -> None:
    """One argument group per family with its settings as flags (default None: the family's default applies
    once the model is known). `scope` "batch" keeps only settings a batch line may set."""
    groups: dict[str, Any] = {}
    for st, fams in registry.all_settings().values():
        if scope == "batch" and not st.batch:
            continue
        label = " / ".join(f.label for f in fams)
        if label not in groups:
            groups[label] = p.add_argument_group(heading.format(label=label))
        # a flag several families share lists every family's choices (each checks its own once loaded)
        choices = tuple(
            dict.fromkeys(
                c for f in fams for s in f.settings(None) if s.name == st.name for c in s.choices or ()
            )
        )
        groups[label].add_argument(
            st.flag, type=_ARG_TYPES[st.kind], default=None, metavar=st.metavar, help=flag_help(st, choices)
        )


def _examples() -> str:
    """The --help epilog: one runnable line per family, then the other modes."""
    lines = ["examples:"]
    for fam in registry.families().values():
        lines.append(f"  mlx-audio-generate --model {fam.example} --prompt 'lofi piano, warm' --seconds 10")
    first = next(iter(registry.families().values()))
    run = f"  mlx-audio-generate --model {first.example}"
    lines += [
        f"{run} --prompt 'jazz trio' --n 4 --seed 7 --output jazz.flac",
        f"  mlx-audio-generate --model {first.name} --weights-dir ./converted --prompt 'rain on a tin roof'",
        f"{run} --prompts-file jobs.jsonl --output-dir out/ --format flac",
        "",
        "Models are downloaded and converted on first use (cached in ~/.cache/mlx-audio-generate, or",
        "$MLX_AUDIO_GENERATE_CACHE). Python: import mlx_audio_generate as mag; mag.load(...), mag.save(...).",
    ]
    return "\n".join(lines)


def setup_arg_parser() -> ArgumentParser:
    examples = ", ".join(f.example for f in registry.families().values())
    names = " / ".join(registry.families())
    p = ArgumentParser(
        prog="mlx-audio-generate",
        description="Generate audio from text on your own machine.",
        epilog=_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the examples keep their lines
    )
    add_version_flag(p)
    p.add_argument(
        "--model",
        required=True,
        help=f"a model name ({examples}, ...), a Hugging Face repo id, a converted folder, or a family "
        f"name ({names}) together with --weights-dir",
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
        "--seed",
        type=int,
        default=None,
        help="random seed; variation i uses seed + i (default random; 0 with --prompts-file)",
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
        "--batch-size",
        type=int,
        default=4,
        help="clips generated together on the device (default 4; 1 with --prompts-file)",
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
    p.add_argument(
        "--overwrite", "-y", action="store_true", help="replace existing --output files (default: refuse)"
    )
    # batch mode's own flags, shown here too (its parser, cli/batch.py, reads them: see _main)
    batch = p.add_argument_group("batch mode (with --prompts-file; --prompts-file X --help for all)")
    batch.add_argument(
        "--output-dir", default=None, help="folder for the files and manifest.jsonl (required)"
    )
    batch.add_argument(
        "--format", choices=BATCH_FORMATS, default=None, help="audio file format of a batch job (default wav)"
    )
    add_family_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _check_generic(args) -> list[str]:
    """Checks that need no model; returns the prompts."""
    if not args.prompt:
        raise UserError("--prompt is required; describe the audio you want, e.g. --prompt 'lofi piano'")
    batch_only = [
        flag for flag, value in (("--output-dir", args.output_dir), ("--format", args.format)) if value
    ]
    if batch_only:
        raise UserError(
            f"{' / '.join(batch_only)} {'apply' if len(batch_only) > 1 else 'applies'} only to a batch job "
            "(--prompts-file); for one run give --output "
            "(its extension picks the format)"
        )
    prompts = check_prompts(args.prompt, "--prompt")
    check_seconds(args.seconds, where="--seconds")
    if args.seed is not None:
        check_seed(args.seed, "--seed")
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if len(prompts) * args.n > MAX_FILES:
        raise UserError(
            f"{len(prompts)} prompt(s) x --n {args.n} would make {len(prompts) * args.n} files; at most "
            f"{MAX_FILES} per run (a --prompts-file job takes any number)"
        )
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    lo, hi = LOUDNESS_RANGE
    if args.normalize is not None and not (lo <= args.normalize <= hi):
        raise UserError(
            f"--normalize takes a loudness in LUFS between {lo:g} and {hi:g}, got {args.normalize}"
        )
    return prompts


def family_options(args, fam: Family, config: dict | None, scope: str | None = None) -> dict[str, Any]:
    """The family's settings from the flags: other families' flags refused, values checked against the
    schema (of this checkpoint when `config` is known), defaults filled, input files checked."""
    own = {st.name: st for st in fam.settings(config) if scope != "batch" or st.batch}
    given = [
        (st, fams)
        for st, fams in registry.all_settings().values()
        if getattr(args, st.name, None) is not None
    ]
    foreign = [(st, fams) for st, fams in given if st.name not in own]
    if foreign:
        flags = ", ".join(st.flag for st, _ in foreign)
        owners = " / ".join(dict.fromkeys(f.label for _, fams in foreign for f in fams))
        raise UserError(f"{flags}: {owners} options, but --model is a {fam.name} model")
    opts = {}
    for name, st in own.items():
        value = st.check(getattr(args, name, None), st.flag)
        if st.kind == "file" and value is not None:
            _check_audio_file(st.flag, value)
        if st.kind == "text" and isinstance(value, str) and value.strip():
            check_prompts(value, st.flag)  # a negative prompt: the same text check as --prompt
        opts[name] = st.default if value is None else value
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
    """Every file this run writes, checked before any model work (name lengths, the sidecar's too)."""
    if args.output:
        base = check_output_path(args.output)
        if len(items) == 1:
            paths = [base]
        else:
            paths = [base.with_name(f"{base.stem}_{i + 1}{base.suffix}") for i in range(len(items))]
    else:
        taken: set[Path] = set()
        paths = []
        for prompt, seed in items:
            paths.append(auto_output_name(label, prompt, seed, taken))
            taken.add(paths[-1])
    paths = [check_output_path(p, sidecar=args.metadata_json) for p in paths]
    if args.output and not args.overwrite:  # auto-named files never take an existing name
        _refuse_existing(paths, args.metadata_json)
    return paths


def _refuse_existing(paths: list[Path], sidecar: bool) -> None:
    """A user's file is never replaced without being asked: name the first one that exists."""
    taken = [q for p in paths for q in ([p, p.with_name(p.name + ".json")] if sidecar else [p]) if q.exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UserError(
            f"output '{_shown(taken[0])}' already exists{more}; pass --overwrite (-y) to replace it, or "
            "choose another --output"
        )


def _shown(path: Path) -> str:
    """A path as printable text (a name with bytes that are not UTF-8 shows them as \\xNN)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _outcome(paths: list[Path], written: int) -> str:
    """`wrote 2 of 6 files; missing: a_3.wav, ...` for the line that reports an interrupted run."""
    missing = [p.name for p in paths[written:]]
    shown = ", ".join(_shown(Path(m)) for m in missing[:8]) + (
        f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
    )
    return f"wrote {written} of {len(paths)} file(s); missing: {shown}"


def _resolve(args) -> Converted:
    """The converted folder to load, opened once (downloading and converting on first use of a name)."""
    from ..converted import open_folder

    if args.weights_dir is not None:
        # with a weights folder, --model names the family (or a known model of it) the folder must hold
        fam = registry.for_model(args.model)
        if fam is None:
            raise UserError(
                f"unknown --model '{args.model}' for --weights-dir; use {' or '.join(registry.families())} "
                "(or a model name without --weights-dir)"
            )
        return open_folder(args.weights_dir, fam.name)
    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return open_folder(
        resolve_model(
            args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code, quiet=args.quiet
        )
    )


def _check_cache(model: str, dtype: str | None) -> None:
    """When `model` must be converted into the cache, the cache must be a writable folder: say so before a
    download, not after it."""
    from ..converted import is_converted
    from ..resolve import cache_dir, cache_root

    repo = registry.short_names().get(model, model)
    if (
        model in registry.families()
        or Path(repo).expanduser().is_dir()
        and is_converted(Path(repo).expanduser())
    ):
        return
    try:
        target = cache_dir(repo, dtype)
    except OSError:
        return  # resolve() reports the model itself
    if is_converted(target):
        return  # only read
    hint = "set MLX_AUDIO_GENERATE_CACHE to a writable folder"
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"the model cache '{cache_root()}' is not a folder ('{folder}' is a file); {hint}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"the model cache '{cache_root()}' is not writable ('{folder}'); {hint}")


def resolve_model(model: str, **kwargs: Any) -> Path:
    """`resolve.resolve` with the cache checked first; an OSError on the way (the cache's folders, a
    source folder that cannot be read) is a one-line error naming the file."""
    from ..resolve import cache_root, resolve

    _check_cache(model, kwargs.get("dtype"))
    try:
        return resolve(model, **kwargs)
    except OSError as e:
        name = e.filename or cache_root()
        where = "the model cache" if Path(name).is_relative_to(cache_root()) else "the model files"
        raise UserError(
            f"cannot use {where}: {e.strerror or e} ('{name}'); set MLX_AUDIO_GENERATE_CACHE to a writable "
            "folder if the cache is the problem"
        ) from None


def _main(argv: list[str] | None) -> int:
    from ..converted import load_model

    raw = sys.argv[1:] if argv is None else argv
    if any(a == "--prompts-file" or a.startswith("--prompts-file=") for a in raw):
        # a JSONL batch job (sharded over mlx.launch ranks): its own flags (--output-dir, --format, ...)
        from .batch import main_from_generate

        return main_from_generate(raw)
    args = setup_arg_parser().parse_args(argv)
    prompts = _check_generic(args)
    base_seed = args.seed if args.seed is not None else random_seed()
    # item k: prompt k // n, seed base + k (a prompt's variations side by side, every seed distinct)
    seeds = variation_seeds(base_seed, len(prompts) * args.n)
    items = list(zip((p for p in prompts for _ in range(args.n)), seeds, strict=True))
    label = Path(args.model).name if args.model not in registry.families() else args.model
    paths = _output_paths(args, items, label)

    known = registry.for_model(args.model)
    if known is not None:  # known family: check its flags before any download or load
        family_options(args, known, None)
    for path in paths:  # temp files of our own earlier runs killed while writing these names
        remove_stale_temps(path)
        if args.metadata_json:
            remove_stale_temps(path.with_name(path.name + ".json"))
    t0 = time.perf_counter()
    conv = _resolve(args)
    fam = registry.get(conv.family)
    opts = family_options(args, fam, conv.config)
    if not args.quiet and is_terminal(sys.stderr):  # reading the weights takes a while: tell the one waiting
        # (a terminal only: in a log, a failing run stays the one line of its error)
        print(f"loading {label} ({fam.label})...", file=sys.stderr, flush=True)
    model = load_model(conv)  # malformed files: a one-line error naming the folder
    if len(items) <= args.batch_size and hasattr(model, "low_memory"):
        model.low_memory = True  # one generate call: the model may let go of what that call is done with
    written = 0
    try:
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            part = "" if len(items) == 1 else f" {start + 1}-{start + len(chunk)}/{len(items)}"
            # a separate bar per stage (the models report stages, the CLI draws them); none with --quiet
            bars = {"generate": fam.verb + part, "decode": "decoding" + part}
            audio = model.generate(
                [p for p, _ in chunk],
                seconds=args.seconds,
                seed=[s for _, s in chunk],
                on_stage=tqdm_stages(bars, args.quiet, units={"decode": "chunk"}),
                **opts,
            )
            # each batch's files are written as soon as it is done: an interruption keeps them
            for (prompt, seed), clip in zip(chunk, audio, strict=True):
                path, sr = paths[written], model.sample_rate
                clip = _write_clip(args, path, prompt, seed, clip, fam, sr, opts)
                written += 1  # counted before anything else can be interrupted (the line below)
                if not args.quiet:
                    what = f"{clip.shape[-1] / sr:.2f} s, {clip.shape[0]} ch, {sr} Hz, seed {seed}"
                    if len(prompts) > 1:  # which prompt this file holds
                        what = f"prompt {prompts.index(prompt) + 1} {_quoted(prompt)}, {what}"
                    print(f"wrote {_shown(path)} ({what})", flush=True)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the finished files stay; name the missing ones
        raise type(e)(_outcome(paths, written) if len(paths) > 1 else "") from None
    except UserError as e:
        if written:
            raise UserError(f"{e}; {_outcome(paths, written)}") from None
        raise
    if not args.quiet:
        print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _quoted(prompt: str, limit: int = 40) -> str:
    """A prompt as it shows in a "wrote" line: quoted, on one line, shortened."""
    text = " ".join(prompt.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def model_record(args) -> dict[str, str]:
    """How the metadata names the model: a name or repo id as given; a folder as its absolute path (the
    path typed, e.g. `../converted/x`, means nothing once the file is elsewhere)."""
    if args.weights_dir is not None:
        return {"model": args.model, "weights_dir": str(Path(args.weights_dir).expanduser().resolve())}
    path = Path(args.model).expanduser()
    return {"model": str(path.resolve()) if path.is_dir() else args.model}


def _write_clip(args, path: Path, prompt: str, seed: int, clip, fam: Family, sr: int, opts: dict) -> Any:
    """Write one clip (loudness-normalised with --normalize) with its metadata; returns what was written."""
    meta = {
        "prompt": prompt,
        **model_record(args),
        "family": fam.name,
        "seed": seed,
        "seconds": args.seconds,
        "settings": {k: v for k, v in opts.items() if v is not None},
        "generator": "mlx-audio-generate",
    }
    if args.normalize is not None:
        clip, meta["loudness"] = loudness_normalize(clip, sr, target_lufs=args.normalize)
        if not args.quiet:  # the result can fall short of the target: say so, not only in the metadata
            print(f"{_shown(path)}: {loudness_report(meta['loudness'])}", file=sys.stderr)
    write_audio(path, clip, sr, metadata=meta, sidecar=args.metadata_json)
    return clip


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-generate"))
