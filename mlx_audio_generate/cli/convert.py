"""`mlx-audio-convert`: a reference checkpoint (HF repo id or local folder) -> an MLX weights folder."""

from __future__ import annotations

from ..convert import convert
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
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --output folder")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _main(argv: list[str] | None) -> int:
    args = setup_arg_parser().parse_args(argv)
    out = convert(
        args.model,
        args.output,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        t5=args.t5,
        force=args.force,
    )
    print(f"converted {args.model} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, "mlx-audio-convert"))
