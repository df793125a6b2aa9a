"""``fxprune`` command line. Each subcommand is one module in ``fxprune/commands/`` exposing
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; it is listed in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import FxPruneError

COMMANDS = ["inspect", "eval", "prune", "sparsify", "sweep", "report", "synth"]


def _load_commands():
    mods = []
    for name in COMMANDS:
        try:
            mods.append(importlib.import_module(f"fxprune.commands.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"fxprune.commands.{name}":
                raise
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="fxprune", description="Prune language models without retraining.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {}
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        handlers[mod.NAME] = mod.run
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(handlers[args.command](args) or 0)
    except FxPruneError as e:
        print(f"fxprune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
