"""`mlx-audio-convert`: a reference checkpoint (HF repo id or local folder) -> an MLX weights folder."""

from __future__ import annotations

import os

from ..convert import convert
from ..errors import UserError
from ..weights import DTYPES
from .common import ArgumentParser, run_main


def setup_arg_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="mlx-audio-convert",
        description="Convert a MusicGen or Stable Audio Open checkpoint to MLX safetensors.",
    )
    p.add_argument("--model", required=True, help="HF repo id (e.g. facebook/musicgen-small) or local folder")
    p.add_argument("--output", required=True, help="folder to write the converted model into")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast weights (default: keep)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow repos outside the known list")
    p.add_argument(
        "--t5", default=None, help="T5 folder or repo for Stable Audio (default google-t5/t5-base)"
    )
    p.add_argument(
        "-q",
        "--quantize",
        action="store_true",
        help="quantize the MusicGen LM / Stable Audio DiT linear layers (T5, codec, VAE stay as converted)",
    )
    p.add_argument("--q-bits", type=int, default=None, help="with -q: bits per weight, 4 or 8 (default 4)")
    p.add_argument(
        "--q-group-size", type=int, default=None, help="with -q: weights per scale: 32, 64, 128 (64)"
    )
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --output folder")
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
        t5=args.t5,
        force=args.force,
        quantize_bits=(4 if args.q_bits is None else args.q_bits) if args.quantize else None,
        quantize_group_size=64 if args.q_group_size is None else args.q_group_size,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(f"converted {args.model} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-convert"))
