"""`mlx-audio-convert`: a reference checkpoint (HF repo id or local folder) -> an MLX weights folder."""

from __future__ import annotations

import os

from .. import registry
from ..convert import convert
from ..errors import UserError
from ..weights import DTYPES
from .common import ArgumentParser, add_version_flag, run_main


def setup_arg_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="mlx-audio-convert",
        description=f"Convert a {registry.labels()} checkpoint to MLX safetensors.",
    )
    add_version_flag(p)
    example = next(iter(next(iter(registry.families().values())).models.values()))
    p.add_argument("--model", required=True, help=f"HF repo id (e.g. {example}) or local folder")
    p.add_argument("--output", required=True, help="folder to write the converted model into")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast weights (default: keep)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow repos outside the known list")
    for fam in registry.families().values():
        for st in fam.convert_settings:
            p.add_argument(st.flag, default=None, metavar=st.metavar, help=f"{fam.label}: {st.help}")
    cores = " / ".join(
        f"{f.label} {f.quantize.description or f.quantize.module}" for f in registry.families().values()
    )
    p.add_argument(
        "-q",
        "--quantize",
        action="store_true",
        help=f"quantize the linear layers of the {cores} (text encoders, codecs, VAEs stay as converted)",
    )
    p.add_argument("--q-bits", type=int, default=None, help="with -q: bits per weight, 4 or 8 (default 4)")
    p.add_argument(
        "--q-group-size", type=int, default=None, help="with -q: weights per scale: 32, 64, 128 (64)"
    )
    p.add_argument(
        "--force", action="store_true", help="replace a previous conversion in --output (never other files)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _main(argv: list[str] | None) -> int:
    args = setup_arg_parser().parse_args(argv)
    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not args.quantize and (args.q_bits is not None or args.q_group_size is not None):
        raise UserError("--q-bits / --q-group-size need -q (--quantize)")
    out = convert(
        args.model,
        args.output,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        force=args.force,
        quantize_bits=(4 if args.q_bits is None else args.q_bits) if args.quantize else None,
        quantize_group_size=64 if args.q_group_size is None else args.q_group_size,
        quiet=args.quiet,
        options=_family_options(args),
    )
    if not args.quiet:
        print(f"converted {args.model} -> {out}")
    return 0


def _family_options(args) -> dict:
    names = {st.name for f in registry.families().values() for st in f.convert_settings}
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-convert"))
