"""``fxprune`` command line. Each subcommand is one module in ``fxprune/commands/`` exposing
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; it is listed in ``COMMANDS``.

Exit codes and errors (the contract the fuzz test holds the CLI to):
* 0: success; 2: any error the user can act on, printed as ONE line
  ``fxprune CMD: error: TypeName: message`` (bad arguments, fxprune's typed errors, the operating
  system refusing a file or memory); 130 / 143: interrupted by SIGINT / SIGTERM (outputs are complete
  or absent, see ``fxprune.output``); 1: an internal error (a bug), also one line; set
  ``FXPRUNE_TRACEBACK=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys

from .errors import FxPruneError

COMMANDS = ["inspect", "eval", "prune", "sparsify", "sweep", "report", "export", "synth"]

EXIT_ERROR = 2
EXIT_BUG = 1
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally``/clean-up runs."""


class _ArgumentFailure(Exception):
    def __init__(self, prog: str, message: str):
        self.prog, self.message = prog, message
        super().__init__(message)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage dump) through ``main``."""

    def error(self, message):
        raise _ArgumentFailure(self.prog, message)


def _load_commands():
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"fxprune.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"fxprune.commands.{name}":
                raise
    return mods


def _size(text: str) -> int:
    from .preflight import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = _Parser(prog="fxprune", description="Prune language models without retraining.")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load pickle weight files (.bin/.pt): they can run code; default: safetensors only")
    parser.add_argument("--memory-limit", type=_size, default=None, metavar="SIZE",
                        help="memory the job may use, e.g. 8GiB (default: what the OS reports available; "
                             "0: skip the check)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    handlers = {}
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        handlers[mod.NAME] = mod.run
    return parser, handlers


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def _say(who: str, kind: str, message: str) -> None:
    print(f"{who}: {kind}: {_one_line(message)}", file=sys.stderr)


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    previous = None
    if hasattr(signal, "SIGTERM"):
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread
            previous = None
    try:
        return _main(argv)
    except Terminated:  # while parsing or importing
        print("fxprune: interrupted: SIGTERM", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        print("fxprune: interrupted: Ctrl-C", file=sys.stderr)
        return EXIT_SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser, handlers = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ArgumentFailure as e:
        _say(e.prog, "error", f"ArgumentError: {e.message}")
        return EXIT_ERROR
    except SystemExit as e:  # --help / --version
        return int(e.code or 0)
    command = args.command
    who = f"fxprune {command}"
    from . import preflight, trust
    trust.ALLOW_PICKLE = bool(args.allow_pickle)
    preflight.MEMORY_LIMIT = args.memory_limit
    try:
        return int(handlers[command](args) or 0)
    except FxPruneError as e:
        _say(who, "error", f"{type(e).__name__}: {e}")
        return EXIT_ERROR
    except Terminated:
        _say(who, "interrupted", "SIGTERM (no partial output is left: an output is complete or absent)")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        _say(who, "interrupted", "Ctrl-C (no partial output is left: an output is complete or absent)")
        return EXIT_SIGINT
    except (OSError, MemoryError) as e:
        if os.environ.get("FXPRUNE_TRACEBACK"):
            raise
        _say(who, "error", f"{type(e).__name__}: {e}")
        return EXIT_ERROR
    except Exception as e:  # a bug: one line unless asked for the traceback
        if os.environ.get("FXPRUNE_TRACEBACK"):
            raise
        _say(who, "internal error", f"{type(e).__name__}: {e} (a bug in fxprune; rerun with "
                                        "FXPRUNE_TRACEBACK=1 for the traceback)")
        return EXIT_BUG
    finally:
        trust.ALLOW_PICKLE = False
        preflight.MEMORY_LIMIT = None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
