"""``fxprune inspect MODEL [--json]``: capture a model and list its prune groups."""
from __future__ import annotations

import json
import sys
import time

NAME = "inspect"
HELP = "Capture MODEL (HF dir, .gguf, smollm2, tiny:<family>) and list its prune groups."


def add_arguments(p):
    p.add_argument("model", help="model directory, .gguf file, 'smollm2' or 'tiny:<family>'")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON")
    p.add_argument("--all", action="store_true", help="also list groups that are not prunable")


def run(args) -> int:
    from ..analysis.analyser import analyse
    from ..analysis.needs import needs, reason_type
    from ..loading import load_model
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    load_s = time.perf_counter() - t0
    a = analyse(loaded.model)
    todo = needs(a)
    if args.json:
        out = a.to_json(args.model)
        out["load_seconds"] = round(load_s, 3)
        out["needs"] = todo
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    groups = a.groups if args.all else [g for g in a.groups if g.prunable or g.kind == "residual"]
    print(f"{args.model}: {a.model_class}, {len(a.groups)} groups ({len(a.prunable())} prunable); "
          f"load {load_s:.1f}s, capture {a.capture_seconds:.1f}s, analysis {a.analysis_seconds:.1f}s")
    print(f"{'group':48s} {'kind':16s} {'units':>6s} {'unit':>5s} {'params/unit':>12s}  status")
    for g in groups:
        why = g.not_offered or (g.blocked_by[0] if g.blocked_by else "")
        status = "prunable" if g.prunable else f"[{reason_type(why) or 'blocked'}] {why}"
        status = status if len(status) < 140 else status[:137] + "..."
        print(f"{g.id:48s} {g.kind:16s} {g.units:6d} {g.unit_size:5d} {g.params_per_unit:12d}  {status}")
    if a.blocking_ops:
        ops = sorted({f"{b['op']} @ {b['module']}" for b in a.blocking_ops})
        print(f"ops with no rule (their axes are blocked): {', '.join(ops[:8])}"
              + (f" ... (+{len(ops) - 8})" if len(ops) > 8 else ""))
    if todo:
        print("what would make the remaining groups prunable:")
        for t in todo:
            where = f" at {', '.join(t['where'][:2])}" if t["where"] and t["need"] != "adapter" else ""
            print(f"  [{t['need']}] {t['what']}{where}: {len(t['groups'])} group(s), e.g. {t['groups'][0]}")
            if t["need"] == "adapter":
                for w in t["where"][:2]:
                    print(f"      {w}")
    return 0
