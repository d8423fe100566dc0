"""The `lamina` command. Each commands_* module registers its own subcommands."""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn, TextIO, cast

from .. import __version__
from ..display import printable
from ..errors import LaminaError
from .common import PrintableOutput, close_services, resolve_repo

# Modules that register subcommands; a missing optional module is skipped.
COMMAND_MODULES = [
    "lamina.backend.cli.commands_core",
    "lamina.backend.cli.commands_lifecycle",
    "lamina.backend.cli.commands_cbt",
    "lamina.backend.cli.commands_kube",
    "lamina.backend.cli.commands_files",
    "lamina.backend.cli.commands_copy",
    "lamina.backend.cli.commands_tui",
    "lamina.backend.cli.commands_history",
    "lamina.backend.cli.commands_schedule",
    # Last: it adds --server to parsers registered above.
    "lamina.backend.cli.commands_api",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamina",
        description="Incremental-forever, block-level backups of volumes to S3 or a local folder.",
    )
    parser.add_argument("--version", action="version", version=f"lamina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every cleanup on the way out runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout = sys.stdout
    sys.stdout = cast(TextIO, PrintableOutput(stdout))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        resolve_repo(args)
        return int(args.func(args) or 0)
    except LaminaError as e:
        # Errors quote paths, names and server replies: one escaped line, whatever they hold.
        print(f"lamina: error: {printable(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("lamina: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        close_services()
        sys.stdout = stdout


def run() -> NoReturn:
    """The `lamina` command: ``main``, then an exit that does not tear the interpreter down."""
    _exit_at_once(main())


def _exit_at_once(code: int) -> NoReturn:
    # Freeing every module's objects (botocore's thousands above all) costs about 0.1 s after
    # the work is done. What an exit must do is done first, in the interpreter's own order:
    # the other threads end (thread pools told to stop first), the atexit handlers run
    # (the job history's last writes among them), the standard streams are flushed.
    shutdown = getattr(threading, "_shutdown", None)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:  # another Python: the ordinary exit
        sys.exit(code)
    shutdown()
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone (a closed pipe): nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
