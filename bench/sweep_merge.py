"""Merge sweeps of the same settings run as separate processes (one recipe each, e.g. one per core)
into one table and one set of plots.

    .venv/bin/python bench/sweep_merge.py out/sweep_full_A out/sweep_full_B --out bench/results/sweep_X

Checks that every part has the same settings and the same dense row (perplexity and zero-shot equal:
the dense model is evaluated by each part), keeps one dense row, then writes ``results.jsonl`` /
``.csv`` / ``.json`` and the plots with ``fxprune.commands.sweep.write_outputs`` (the sweep's own
writer), so the merged folder can be read and re-rendered like any sweep folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fxprune.commands.sweep import _load_rows, write_outputs
from fxprune.output import OwnedDir


def merge(parts: list[Path]) -> list[dict]:
    rows, dense, settings = [], None, None
    for part in parts:
        for r in _load_rows(part / "results.jsonl"):
            if settings is None:
                settings = r["settings"]
            if r["settings"] != settings:
                raise SystemExit(f"{part}: other settings than {parts[0]}: {r['settings']} vs {settings}")
            if r["recipe"] == "dense":
                key = (r.get("ppl"), r.get("ppl_by_len"), r.get("zs_acc"), r.get("zs_acc_norm"))
                if dense is None:
                    dense = key
                    rows.insert(0, r)
                elif key != dense:
                    raise SystemExit(f"{part}: its dense row differs from the first part's: {key} vs {dense}")
                continue
            rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--widths-run", default=None)
    args = ap.parse_args()
    rows = merge(args.parts)
    owned = OwnedDir(args.out, kind="sweep", create=True)
    owned.write("results.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    plots = write_outputs(args.out, rows, args.widths_run)
    print(f"{len(rows)} rows from {len(args.parts)} parts -> {args.out}; plots: {', '.join(plots.values())}")


if __name__ == "__main__":
    main()
