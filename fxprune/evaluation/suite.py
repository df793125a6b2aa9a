"""The zero-shot suite every result can carry: seven tasks, acc and acc_norm, their average, time.

``evaluate_suite(model, tokenizer, tasks)`` scores each task with the own scorer (on the Lightning
engine) or lm-eval (``scorer="lm-eval"``), times it, and returns a JSON-ready dict::

    {"tasks": {name: {"acc", "acc_norm", "items", "seconds", "sha256"}}, "average": {"acc", "acc_norm"},
     "limit": N | None, "scorer": "...", "full_sets": bool}

``limit`` (first N items of each task) is recorded; ``full_sets`` is true only without it.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

SEVEN = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq", "openbookqa")
SCORERS = ("own", "lm-eval")


def parse_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """``"all"`` or ``"seven"`` -> the seven tasks; else a comma-separated list (validated)."""
    from ..errors import DataError
    from .tasks import TASKS
    if not spec:
        return []
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for n in (s.strip() for s in names):
        if not n:
            continue
        if n in ("all", "seven"):
            out += [t for t in SEVEN if t not in out]
        elif n not in TASKS:
            raise DataError(f"unknown task {n!r}; known: {sorted(TASKS)} (or 'all')")
        elif n not in out:
            out.append(n)
    return out


def evaluate_suite(model: Any, tokenizer: Any, tasks: Sequence[str], *, limit: int | None = None,
                   root: str | None = None, engine: Any = None, scorer: str = "own") -> dict:
    from ..errors import DataError
    from .tasks import load_task
    if scorer not in SCORERS:
        raise DataError(f"unknown scorer {scorer!r}; known: {SCORERS}")
    out = {"tasks": {}, "limit": limit, "full_sets": limit is None, "scorer": scorer}
    if scorer == "own" and engine is None:
        from ..calibration.engine import Engine
        engine = Engine()
    for name in tasks:
        items, proto = load_task(name, root, limit)
        t0 = time.perf_counter()
        if scorer == "own":
            r = engine.zeroshot(model, tokenizer, items)
            acc, acc_norm, n = r.acc, r.acc_norm, r.items
        else:
            from .lmeval import evaluate_lm_eval
            r = evaluate_lm_eval(model, tokenizer, [name], root=root, limit=limit)[name]
            acc, acc_norm, n = r["acc"], r["acc_norm"], r["items"]
        out["tasks"][name] = {"acc": acc, "acc_norm": acc_norm, "items": n,
                              "seconds": round(time.perf_counter() - t0, 2), "sha256": proto["sha256"]}
    if out["tasks"]:
        vals = list(out["tasks"].values())
        out["average"] = {"acc": sum(v["acc"] for v in vals) / len(vals),
                          "acc_norm": sum(v["acc_norm"] for v in vals) / len(vals), "tasks": len(vals)}
    return out
