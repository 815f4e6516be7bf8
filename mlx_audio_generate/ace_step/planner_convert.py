"""Convert a 5 Hz LM planner once, optionally quantized (the `planner` setting then takes the folder):

    python -m mlx_audio_generate.ace_step.planner_convert --model 1.7B --output planner-1.7B-q4 -q
    python -m mlx_audio_generate.ace_step.planner_convert --model ./acestep-5Hz-lm-4B --output p --q-bits 8 -q

`--model`: 0.6B / 1.7B / 4B (fetched from Hugging Face, only the LM's files) or a released LM folder.
`-q` quantizes every linear layer and the embedding through mlx-lm's `quantize_model` (bits 4 or 8, groups of
32 / 64 / 128); `--dtype` casts the weights first. Bad input: one line, exit 2 (cli/common.py).
"""

from __future__ import annotations

from pathlib import Path

from ..cli.common import ArgumentParser, run_main
from ..errors import UserError
from ..quantize import check_options
from .family import PLANNERS
from .planner_model import convert_planner

PROG = "mlx_audio_generate.ace_step.planner_convert"


def _main(argv: list[str] | None) -> int:
    p = ArgumentParser(prog=PROG, description="Convert an ACE-Step 5 Hz LM planner for MLX.")
    p.add_argument("--model", required=True, help=f"{' / '.join(PLANNERS)} or a released LM folder")
    p.add_argument("--output", required=True, help="the converted planner folder (must not exist)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None)
    p.add_argument("-q", "--quantize", action="store_true", help="quantize through mlx-lm")
    p.add_argument("--q-bits", type=int, default=None, help="4 (default) or 8")
    p.add_argument("--q-group-size", type=int, default=None, help="32, 64 (default) or 128")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if not args.quantize and (args.q_bits is not None or args.q_group_size is not None):
        raise UserError("--q-bits / --q-group-size need -q (--quantize)")
    bits = (4 if args.q_bits is None else args.q_bits) if args.quantize else None
    group = 64 if args.q_group_size is None else args.q_group_size
    check_options(bits, group)
    if args.model in PLANNERS:
        from .planner_run import _fetch

        src, source = _fetch(args.model), f"{PLANNERS[args.model][0]}:{args.model}"
    else:
        src, source = Path(args.model).expanduser(), args.model
        if not src.is_dir():
            raise UserError(f"--model '{args.model}' is neither {', '.join(PLANNERS)} nor an existing folder")
    out = convert_planner(src, Path(args.output), source, args.dtype, bits, group)
    print(f"converted {args.model} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    raise SystemExit(run_main(_main, argv, PROG))


if __name__ == "__main__":
    main()
