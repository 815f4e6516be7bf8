"""`mlx-audio-generate --prompts-file jobs.jsonl --output-dir out/`: a batch job, optionally over several
machines or GPUs (`mlx.launch ... -- mlx-audio-generate --prompts-file ...`; see mlx_audio_generate/batch.py).

Everything the job could trip on (flags, every line of the prompts file, the output folder) is checked before
the model is loaded, and every rank checks the same things, so a bad job fails on all ranks at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import ArgumentParser, add_version_flag, interruptible_imports, refuse_gpu_less_rank, run_main

with interruptible_imports("mlx-audio-generate"):  # `python -m` (mlx.launch) starts here
    refuse_gpu_less_rank("mlx-audio-generate")  # before MLX (mlx.launch --backend nccl)
    from .. import batch as B
    from .. import registry
    from ..converted import open_folder, read_meta
    from ..errors import UserError
    from ..settings import check_seed
    from .generate import add_family_flags, resolve_model


def setup_arg_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="mlx-audio-generate",
        description="Generate one file per line of a JSONL prompts file; shards over ranks under mlx.launch.",
    )
    add_version_flag(p)
    p.add_argument("--prompts-file", required=True, metavar="JSONL", help="one JSON object per line (--help)")
    p.add_argument("--output-dir", required=True, help="folder for the files and manifest.jsonl (created)")
    p.add_argument("--model", default=None, help="short name, HF repo id or converted folder")
    p.add_argument("--weights-dir", default=None, help="folder written by mlx-audio-convert")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed of items without their own (default 0)")
    p.add_argument("--format", choices=B.FORMATS, default="wav", help="audio file format (default wav)")
    p.add_argument("--seconds", type=float, default=None, help="default duration of an item (default 5)")
    add_family_flags(p, scope="batch", heading="{label} defaults (a line's own keys win)")
    p.add_argument(
        "--overwrite", "-y", action="store_true", help="replace files at the job's names it did not write"
    )
    p.add_argument("--quiet", action="store_true", help="no per-item lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.epilog = (
        'Each line: {"prompt": "...", "id"?: "name", "seed"?: 123, <setting>?: value}; settings: '
        + ", ".join(B.all_setting_names())
        + ". Files are <output-dir>/<id or line index:05d>.<format>; a rerun skips finished items."
    )
    return p


def _flag_settings(args) -> dict:
    """The settings flags given on the command line (checked against the family once it is known)."""
    names = ["seconds", *(n for n, (st, _) in registry.all_settings().items() if st.batch)]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _family_hint(args):
    """(family, opened folder) when the family is known without fetching anything, so the prompts file can
    be checked against that family before a possibly long download and conversion; the folder is None
    until the model is resolved."""
    if args.weights_dir is not None:
        conv = open_folder(args.weights_dir)
        if args.model in registry.families() and args.model != conv.family:
            raise UserError(
                f"--weights-dir '{args.weights_dir}' holds a {conv.family} model, not {args.model}"
            )
        return registry.get(conv.family), conv
    if Path(args.model).expanduser().is_dir():
        if read_meta(Path(args.model).expanduser()) is None:
            return None, None  # a reference checkpoint folder: resolve() converts it
        conv = open_folder(args.model)
        return registry.get(conv.family), conv
    return registry.for_model(args.model), None


def _main(argv: list[str] | None) -> int:
    args = setup_arg_parser().parse_args(argv)
    if args.model is None and args.weights_dir is None:
        raise UserError("give --model (a name, repo id or converted folder) or --weights-dir")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_seed(args.seed, "--seed")
    flags = _flag_settings(args)
    lines = B.read_jobs(args.prompts_file)
    B.check_keys(lines, args.prompts_file, None)

    if args.weights_dir is None and args.model in registry.families():
        example = registry.get(args.model).example
        raise UserError(f"--model {args.model} needs --weights-dir; or name a checkpoint (e.g. {example})")
    family, conv = _family_hint(args)
    model_name = None
    if args.weights_dir is not None:
        model_name = str(Path(args.weights_dir))  # `dir/` and `dir` are the same request on a rerun
    elif family is None:  # the family is only known once the model is resolved (maybe fetched)
        conv, model_name = open_folder(resolve_model(args.model, quiet=args.quiet)), args.model
        family = registry.get(conv.family)
    # every line is checked before the output folder is touched or a checkpoint is fetched
    items = B.parse_items(lines, args.prompts_file, family, args.seed, B.family_defaults(family, flags))
    out_dir = B.prepare_output_dir(args.output_dir, args.format)
    if not args.overwrite:  # every rank checks every item: all refuse together
        B.check_not_foreign(items, out_dir, args.format)
    if model_name is None:
        if conv is None:  # a name whose family was known: resolved (maybe fetched) now, opened once
            conv = open_folder(resolve_model(args.model, quiet=args.quiet))
        model_name = args.model

    def load():
        from ..converted import load_model

        return load_model(conv)  # malformed files: a one-line error naming the folder

    job = B.Job(
        items=items,
        out_dir=out_dir,
        ext=args.format,
        model_name=model_name,
        load=load,
        batch_size=args.batch_size,
        quiet=args.quiet,
        check=lambda model: B.check_loaded(model, family, conv.config, items, args.prompts_file),
    )
    manifest = B.run_job(job)
    if manifest is not None and not args.quiet:
        skipped = sum(r["skipped"] for r in manifest)
        print(
            f"{len(manifest)} item(s) in {out_dir} ({len(manifest) - skipped} generated, {skipped} already "
            f"done); manifest {out_dir / B.MANIFEST}",
            file=sys.stderr,
        )
    return 0


def main_from_generate(argv: list[str] | None) -> int:
    """The batch job inside `mlx-audio-generate`'s own run_main (it routes `--prompts-file` here)."""
    return _main(argv)


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-generate"))


if __name__ == "__main__":
    main()
