"""CLI plumbing shared by every command: one-line errors with exit code 2, optional tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from ..errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(
    main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str | None = None
) -> int:
    """Run `main`, turning UserError into `prog: error: ...` + exit 2, never a traceback unless --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("MLX_AUDIO_DEBUG") == "1"
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main(argv) or 0
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            f"{prog}: error: out of memory; try fewer --seconds, a smaller model or --dtype float16",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # an internal bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"{prog}: internal error: {type(e).__name__}: {msg} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1
