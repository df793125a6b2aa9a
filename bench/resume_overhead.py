"""Issue 14: the cost of recording progress (``prune --resume``, fxprune/progress.py) on SmolLM2.

    python bench/resume_overhead.py --recipe goa-liar-ffn-global-20 --samples 16 --seq-len 128 --repeats 2

One process, the model loaded once; per repeat, interleaved: a plain prune, a prune recording progress,
and a prune interrupted after half the recorded blocks then resumed (as a kill would leave it). CPU
seconds (time.process_time; the machine is shared, wall time is load) and wall seconds per mode,
medians and ratios to plain; bytes the progress directory held at its largest; every mode's tensors
compared with the plain run's (sha256). Writes bench/results/resume_overhead.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--recipe", default="goa-liar-ffn-global-20")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    import fxprune
    from fxprune.data import calibration_windows, tokenizer_for
    from fxprune.loading import load_model
    from fxprune.progress import Progress, RunProgress, job_key, tensors_digest
    loaded = load_model(args.model)
    base, tok = loaded.model.eval(), tokenizer_for(loaded)
    recipe = fxprune.load_recipe(args.recipe).with_calibration(samples=args.samples, seq_len=args.seq_len,
                                                               source="c4")
    ids = calibration_windows(tok, recipe.calibration, model=base).ids
    key = job_key(recipe, base, ids)
    rows, ref = [], None
    real_commit = RunProgress.commit

    def one(mode):
        model = copy.deepcopy(base)
        work = Path(tempfile.mkdtemp(prefix="fxresume-"))
        peak = [0]

        def commit(self, *a, **k):
            real_commit(self, *a, **k)
            peak[0] = max(peak[0], sum(f.stat().st_size for f in self.progress.directory.iterdir()))
            commit.count += 1
            if mode == "interrupted+resumed" and commit.count == commit.stop:
                raise KeyboardInterrupt

        commit.count, commit.stop = 0, 0
        RunProgress.commit = commit
        c0, w0 = time.process_time(), time.perf_counter()
        resumed = 0
        try:
            if mode == "plain":
                fxprune.prune(model, recipe, ids)
            elif mode == "progress":
                prog = Progress.open(work / "p", key).attach(model)
                fxprune.prune(model, recipe, ids)
                prog.finish()
            else:
                commit.stop = rows[-1]["commits"] // 2 if rows else 10
                prog = Progress.open(work / "p", key).attach(model)
                try:
                    fxprune.prune(model, recipe, ids)
                except KeyboardInterrupt:
                    pass
                model = copy.deepcopy(base)  # a new process would load the model again
                prog = Progress.open(work / "p", key).attach(model)
                fxprune.prune(model, recipe, ids)
                resumed = prog.resumed_blocks
                prog.finish()
        finally:
            RunProgress.commit = real_commit
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        digest = tensors_digest(model.state_dict())
        return {"mode": mode, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "progress_peak_mb":
                round(peak[0] / 2 ** 20, 1), "commits": commit.count, "resumed_blocks": resumed, "digest": digest}

    for rep in range(args.repeats):
        for mode in ("plain", "progress", "interrupted+resumed"):
            r = one(mode)
            r["repeat"] = rep
            if mode == "plain" and ref is None:
                ref = r["digest"]
            r["same_tensors_as_plain"] = r["digest"] == ref
            rows.append(r)
            print(json.dumps(r), flush=True)
    summary = {}
    plain_cpu = statistics.median(r["cpu_s"] for r in rows if r["mode"] == "plain")
    for mode in ("plain", "progress", "interrupted+resumed"):
        rs = [r for r in rows if r["mode"] == mode]
        cpu = [r["cpu_s"] for r in rs]
        summary[mode] = {"cpu_s_median": statistics.median(cpu), "cpu_s_spread": [min(cpu), max(cpu)],
                         "wall_s_median": statistics.median(r["wall_s"] for r in rs),
                         "cpu_ratio_to_plain": round(statistics.median(cpu) / plain_cpu, 3),
                         "all_same_tensors_as_plain": all(r["same_tensors_as_plain"] for r in rs)}
    summary["progress_peak_mb"] = max(r["progress_peak_mb"] for r in rows)
    out = {"command": "python " + " ".join(sys.argv), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "settings": {"model": args.model, "recipe": args.recipe, "calib": f"c4 {args.samples} x {args.seq_len}",
                        "threads": 1, "repeats": args.repeats}, "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=1))
    (REPO / "bench" / "results" / "resume_overhead.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
