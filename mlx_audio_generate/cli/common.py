"""CLI plumbing shared by every command: one-line errors with exit code 2, optional tracebacks, and
interruptions (Ctrl-C: exit 130, SIGTERM: exit 143) reported on one line at any moment of the run.

This module imports only the standard library (and errors.py), so a console script can import it first and
guard its heavier imports with `interruptible_imports`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator

from ..errors import UserError


class Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception (inside `run_main`), so that every cleanup that runs on Ctrl-C (the
    temp files of atomic writes, ...) runs on `kill` too."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _exit_code(e: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 128 + signal.SIGINT


def _report_interrupt(prog: str, e: KeyboardInterrupt) -> int:
    what = "terminated" if isinstance(e, Terminated) else "interrupted"
    detail = f"; {e}" if str(e) else ""
    print(f"{prog}: {what}{detail}", file=sys.stderr)
    return _exit_code(e)


@contextlib.contextmanager
def interruptible_imports(prog: str) -> Iterator[None]:
    """Around a console script's module-level imports: Ctrl-C there exits 130 with one line, not the
    traceback of whatever module was being imported."""
    try:
        yield
    except KeyboardInterrupt as e:
        raise SystemExit(_report_interrupt(prog, e)) from None


def refuse_gpu_less_rank(prog: str) -> None:
    """Under `mlx.launch --backend nccl`, refuse a rank whose GPU does not exist (distributed.check_nccl_rank)
    with one line and exit 2. Called before MLX is imported: its CUDA build fails at import on such a rank."""
    from ..distributed import check_nccl_rank

    try:
        check_nccl_rank()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block; the previous handlers are restored after it (tests run
    the commands in-process)."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        for s, handler in old.items():
            if handler is not None:
                signal.signal(s, handler)


def _ignore_more_signals() -> None:
    """A second Ctrl-C while the first one is reported must not print a traceback."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def add_version_flag(p: argparse.ArgumentParser) -> None:
    """`--version`: the package version (read from the package, not from installed metadata)."""
    from .. import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(
    main: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str | None = None
) -> int:
    """Run `main`, turning UserError into `prog: error: ...` + exit 2, never a traceback unless --debug;
    Ctrl-C into `prog: interrupted[; detail]` + exit 130, SIGTERM into `prog: terminated[; ...]` + 143."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("MLX_AUDIO_DEBUG") == "1"
    prog = prog or os.path.basename(sys.argv[0])
    with _signals_as_exceptions():
        try:
            return _run(main, argv, prog, debug)
        except KeyboardInterrupt as e:  # one that came while an error was being reported
            _ignore_more_signals()
            return _exit_code(e)


def _run(
    main: Callable[[list[str] | None], int | None], argv: list[str] | None, prog: str, debug: bool
) -> int:
    try:
        return main(argv) or 0
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        _ignore_more_signals()
        return _report_interrupt(prog, e)
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
