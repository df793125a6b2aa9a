"""Benchmark: seven zero-shot tasks, full sets, dense SmolLM2 vs pruned models (default: the README recipe).

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/zeroshot_full.py > bench/results/zeroshot_full.log 2>&1 &
    .venv/bin/python bench/zeroshot_full.py --recipes goa-liar-ffn-global-20 olica-goa-liar-global-20

With ``--recipes`` every recipe's checkpoint is ``out/bench/smollm2-RECIPE`` (pruned when missing);
chunks already in the jsonl are skipped, so adding a recipe scores only its chunks.

1. Prunes SmolLM2 with the README job (``fxprune prune smollm2 --recipe goa-liar-ffn-global-20 --out
   out/bench/smollm2-goa-liar-ffn-global-20``, skipped when that checkpoint exists).
2. Scores ARC-e, ARC-c, BoolQ, OBQA, PIQA, WinoGrande and HellaSwag (all items of the local files) on
   both models with fxprune's own scorer (lm-eval log-likelihood protocol, shared-context scoring,
   fp32 or ``--precision bf16-mixed``, one thread), in chunks of ``--chunk`` items, task by task and model after model, so that
   matching pairs are complete first. Every chunk is one line of ``bench/results/zeroshot_full.jsonl``
   (correct counts, items, seconds); a rerun skips the chunks already there (resumable).
3. Writes ``bench/results/zeroshot_full.md``: acc / acc_norm per task and model, the average over the
   tasks complete for both models, items done and seconds per task (a task still incomplete is
   marked "partial, N of M items" and left out of the average).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
ORDER = ["openbookqa", "winogrande", "arc_challenge", "piqa", "arc_easy", "boolq", "hellaswag"]
RECIPE = "goa-liar-ffn-global-20"


def _done(path: Path) -> dict:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["model"], r["task"], r["start"])] = r
    return done


def table(path: Path, models: list[str]) -> str:
    from fxprune.evaluation.tasks import load_task
    done = _done(path)
    totals = {t: len(load_task(t)[0]) for t in ORDER}
    rows, avg = [], {m: [] for m in models}
    agg = {}
    for m in models:
        for t in ORDER:
            rs = [r for (mm, tt, _), r in done.items() if mm == m and tt == t]
            n = sum(r["items"] for r in rs)
            agg[m, t] = (sum(r["acc_count"] for r in rs) / max(n, 1), sum(r["acc_norm_count"] for r in rs) / max(n, 1),
                         n, sum(r["seconds"] for r in rs))
    complete = [t for t in ORDER if all(agg[m, t][2] == totals[t] for m in models)]
    head = "| task | items | " + " | ".join(f"{m} acc | {m} acc_norm | {m} s" for m in models) + " |"
    rows.append(head)
    rows.append("|" + "---|" * (2 + 3 * len(models)))
    for t in ORDER:
        cells = []
        for m in models:
            a, an, n, s = agg[m, t]
            if n == 0:
                cells += ["-", "-", "-"]
                continue
            mark = "" if n == totals[t] else f" (partial, {n} of {totals[t]})"
            cells += [f"{a:.4f}{mark}", f"{an:.4f}", f"{s:.0f}"]
        rows.append(f"| {t} | {totals[t]} | " + " | ".join(cells) + " |")
    for m in models:
        for t in complete:
            avg[m].append(agg[m, t])
    cells = []
    for m in models:
        if avg[m]:
            cells += [f"{sum(x[0] for x in avg[m]) / len(avg[m]):.4f}",
                      f"{sum(x[1] for x in avg[m]) / len(avg[m]):.4f}", f"{sum(x[3] for x in avg[m]):.0f}"]
        else:
            cells += ["-", "-", "-"]
    rows.append(f"| average of {len(complete)} complete tasks ({', '.join(complete)}) | | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--tasks", nargs="*", default=ORDER)
    ap.add_argument("--recipes", nargs="+", default=[RECIPE], help="pruned models to score beside dense")
    ap.add_argument("--out", default=None, help="checkpoint of the single recipe (default out/bench/smollm2-RECIPE)")
    ap.add_argument("--tag", default="zeroshot_full")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--score", nargs="+", default=None,
                    help="score only these models (dense and/or recipe names; default all): two processes can then "
                         "share one results file, each scoring other models")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                    help="Lightning precision of the scoring (bf16-mixed: AMX/bf16 matmuls, about 2x faster on "
                         "this CPU; without --tag its results go to zeroshot_full_bf16.jsonl, never mixed with fp32 chunks)")
    args = ap.parse_args(argv)
    if args.precision != "32-true" and args.tag == "zeroshot_full":
        args.tag = "zeroshot_full_bf16"
    import torch
    torch.set_num_threads(1)
    jsonl = RESULTS / f"{args.tag}.jsonl"
    models = ["dense", *args.recipes]
    if not args.table_only:
        ckpts = {}
        for recipe in args.recipes:
            ckpt = ckpts[recipe] = Path(args.out if args.out and len(args.recipes) == 1
                                        else ROOT / "out" / "bench" / f"smollm2-{recipe}")
            if not (ckpt / "config.json").is_file() and (not args.score or recipe in args.score):
                cmd = [str(ROOT / ".venv" / "bin" / "fxprune"), "prune", "smollm2", "--recipe", recipe,
                       "--out", str(ckpt), "--json"]
                print("running:", " ".join(cmd), flush=True)
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True)
                name = f"{args.tag}_prune.json" if recipe == RECIPE else f"{args.tag}_prune_{recipe}.json"
                (RESULTS / name).write_text(json.dumps(
                    {"command": " ".join(cmd), "seconds": time.perf_counter() - t0}, indent=1))
        from fxprune.calibration import Engine
        from fxprune.calibration.engine import EngineConfig
        from fxprune.data import tokenizer_for
        from fxprune.evaluation.tasks import load_task
        from fxprune.loading import load_model
        loaded = {m: load_model("smollm2" if m == "dense" else str(ckpts[m]))
                  for m in models if not args.score or m in args.score}
        engine = Engine(EngineConfig(precision=args.precision))
        for lm in loaded.values():
            lm.model = engine.prepare(lm.model)
        done = _done(jsonl)
        cpuinfo = Path("/proc/cpuinfo")
        cpu_bf16 = "avx512_bf16" in cpuinfo.read_text() if cpuinfo.exists() else None
        for task in args.tasks:
            items, proto = load_task(task)
            for start in range(0, len(items), args.chunk):
                for m in models:
                    if (m, task, start) in done or (args.score and m not in args.score):
                        continue
                    chunk = items[start:start + args.chunk]
                    t0 = time.perf_counter()
                    r = engine.zeroshot(loaded[m].model, tokenizer_for(loaded[m]), chunk)
                    rec = {"model": m, "task": task, "start": start, "items": r.items,
                           "acc_count": round(r.acc * r.items), "acc_norm_count": round(r.acc_norm * r.items),
                           "seconds": round(time.perf_counter() - t0, 2), "sha256": proto["sha256"],
                           "file": proto["file"], "scorer": "fxprune own (shared context, packed where the probe agrees)",
                           "cpu_bf16": cpu_bf16,
                           "source": "smollm2" if m == "dense" else str(ckpts[m]), "threads": 1,
                           "precision": args.precision}
                    with jsonl.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(json.dumps(rec), flush=True)
            (RESULTS / f"{args.tag}.md").write_text(_md(jsonl, models, args))
    (RESULTS / f"{args.tag}.md").write_text(_md(jsonl, models, args))
    print(table(jsonl, models))
    return 0


def _md(jsonl, models, args) -> str:
    pruned = models[1:]
    return ("# Zero-shot, seven tasks, full sets: dense SmolLM2-135M-Instruct vs " + ", ".join(pruned) + "\n\n"
            "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/zeroshot_full.py"
            + ("" if pruned == [RECIPE] else " --recipes " + " ".join(pruned))
            + ("" if args.precision == "32-true" else f" --precision {args.precision}") + "` (resumable; prune: "
            + "; ".join(f"`fxprune prune smollm2 --recipe {r} --out out/bench/smollm2-{r}`" for r in pruned) + ").\n"
            "Scorer: fxprune's own (lm-eval log-likelihood protocol; tested equal to lm-eval 0.4.x item by item, "
            "tests/test_lmeval_parity.py), shared-context scoring, "
            + ("fp32" if args.precision == "32-true" else f"Lightning precision {args.precision} (bf16 matmuls: "
               "log-likelihoods differ from fp32 by ~0.07 nats on average)") + ", one CPU thread on a shared 2-core machine "
            "(seconds are wall time under contention). Data: the local files of shared/data (SOURCES.md), every item. "
            "acc_norm = log-likelihood / characters of the choice (lm-eval). WinoGrande: partial scoring (lm-eval reports acc only; "
            "acc_norm is given for completeness).\n\n" + table(jsonl, models) + "\n")


if __name__ == "__main__":
    sys.exit(main())
