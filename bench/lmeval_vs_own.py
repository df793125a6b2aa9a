"""Benchmark: fxprune's own zero-shot scorer vs lm-eval-harness 0.4.13 on SmolLM2, item by item.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lmeval_vs_own.py --limit 10

Same items (the first --limit of each local task file), the same in-memory model (dense SmolLM2,
fp32, one thread). lm-eval runs its official task YAMLs with the data source replaced
(fxprune/evaluation/lmeval.py). Records per task: whether the prompts are identical, max / mean
|log-likelihood difference|, acc and acc_norm of both, and seconds of each scorer.
Results: bench/results/lmeval_vs_own.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from fxprune.data import tokenizer_for
    from fxprune.evaluation.lmeval import evaluate_lm_eval
    from fxprune.evaluation.suite import SEVEN
    from fxprune.evaluation.tasks import load_task
    from fxprune.evaluation.zeroshot import loglikelihoods, score_items
    from fxprune.loading import load_model
    loaded = load_model(args.model)
    tok = tokenizer_for(loaded)
    rows = {}
    for name in SEVEN:
        items, proto = load_task(name, limit=args.limit)
        reqs = [r for it in items for r in it.requests]
        t0 = time.perf_counter()
        own = loglikelihoods(loaded.model, tok, reqs, progress=False)
        t_own = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = evaluate_lm_eval(loaded.model, tok, [name], limit=args.limit)[name]
        t_ref = time.perf_counter() - t0
        res = score_items(items, own)
        diffs = [abs(a - b) for a, b in zip(own, ref["loglikelihoods"])]
        rows[name] = {"items": len(items), "requests": len(reqs), "same_prompts": ref["requests"] == reqs,
                      "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": sum(diffs) / len(diffs),
                      "own": {"acc": res.acc, "acc_norm": res.acc_norm, "seconds": round(t_own, 2)},
                      "lm_eval": {"acc": ref["acc"], "acc_norm": ref["acc_norm"], "seconds": round(t_ref, 2)},
                      "sha256": proto["sha256"]}
        print(name, json.dumps(rows[name]), flush=True)
    import lm_eval
    out = {"command": "OMP_NUM_THREADS=1 .venv/bin/python bench/lmeval_vs_own.py " + " ".join(argv or sys.argv[1:]),
           "model": args.model, "limit": args.limit, "lm_eval": lm_eval.__version__, "tasks": rows}
    (HERE / "results" / "lmeval_vs_own.json").write_text(json.dumps(out, indent=1))
    md = ["# Own scorer vs lm-eval-harness " + lm_eval.__version__ + f" on {args.model} (first {args.limit} items per task)", "",
          f"Command: `{out['command']}`. fp32, one CPU thread, shared machine (seconds are wall time under load; "
          "lm-eval's include its task building).", "",
          "| task | requests | same prompts | max abs dLL | mean abs dLL | own acc / acc_norm | lm-eval acc / acc_norm | own s | lm-eval s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        md.append(f"| {n} | {r['requests']} | {r['same_prompts']} | {r['max_abs_ll_diff']:.2e} | {r['mean_abs_ll_diff']:.2e} | "
                  f"{r['own']['acc']:.3f} / {r['own']['acc_norm']:.3f} | {r['lm_eval']['acc']:.3f} / {r['lm_eval']['acc_norm']:.3f} | "
                  f"{r['own']['seconds']} | {r['lm_eval']['seconds']} |")
    (HERE / "results" / "lmeval_vs_own.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
