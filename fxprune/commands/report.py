"""``fxprune report DIR``: (re)render the report of a pruned checkpoint (``DIR/report.md`` + widths plot).

Uses what ``fxprune prune`` recorded (``fxprune_report.json``, ``report.json``) and what the checkpoint
itself shows (parameter count and per-layer widths from the reloaded model, file sizes).
"""
from __future__ import annotations

NAME = "report"
HELP = "Render the human-readable report (Markdown + widths plot) of a pruned checkpoint directory."


def add_arguments(p):
    p.add_argument("dir", metavar="DIR", help="a checkpoint directory written by fxprune prune")
    p.add_argument("--print", action="store_true", help="also print the Markdown")


def run(args) -> int:
    from pathlib import Path

    from ..errors import ModelLoadError
    from ..evaluation.render import render_dir
    d = Path(args.dir)
    if not (d / "config.json").is_file():
        raise ModelLoadError(str(d), "not a checkpoint directory (no config.json)")
    path = render_dir(d)
    if args.print:
        print(path.read_text())
    print(f"report: {path}")
    return 0
