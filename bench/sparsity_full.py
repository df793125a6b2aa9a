"""Sparsity at the full protocol (issue 17): magnitude, Wanda, SparseGPT and the multiple-removal solver
(`mrp`) at 2:4, 4:8, 50% and 60% on SmolLM2-135M, llm-compressor's SparseGPT and Wanda in the same
run (their own venv), wall time, CPU time and peak memory for each, 50% with 3 calibration seeds.

Protocol: calibration 128 x 512 tokens of the C4 train head (``bench/sparsity_data.calibration_windows``,
seed 0, 1, 2: the windows llm-compressor gets too), evaluation WikiText-2 raw test, L = 512, first 64
windows, token-level perplexity (``fxprune.data.evaluation_windows``, ``fxprune.evaluation.perplexity``).
Our methods run through the library (``fxprune.sparsify``: the block-wise runner, calibration batches
of 8). One thread per process; every job runs in a fresh subprocess so its
peak RSS is its own.

    # the whole queue (resumes: jobs already in bench/results/sparsity_full.jsonl are skipped)
    PYTHONPATH=$PWD nohup .venv/bin/python bench/sparsity_full.py run > bench/results/sparsity_full.log 2>&1 &
    # the table
    PYTHONPATH=$PWD .venv/bin/python bench/sparsity_full.py render
    # another results file (e.g. a rerun after a kernel change, keyed by the same job names)
    SPARSITY_FULL_TAG=sparsity_full_pcg PYTHONPATH=$PWD .venv/bin/python bench/sparsity_full.py run JOBS
    # smoke test of the pipeline (2 calibration / 2 evaluation windows, results under bench/results/tmp)
    SPARSITY_FULL_SMOKE=1 PYTHONPATH=$PWD .venv/bin/python bench/sparsity_full.py run dense@-#0 mrp@2:4#0 ...

Job kinds: ``METHOD@PATTERN#SEED`` for our methods (``dense@-#0`` evaluates the dense model) and
``llmc-sparsegpt@PATTERN#SEED`` / ``llmc-wanda@PATTERN#SEED``: export the dense model and the same
calibration windows (main venv), prune with llm-compressor 0.14.0.1 in /work/venv-llmc
(``bench/llmc_peer.py prune``), evaluate with our perplexity code (main venv).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / (os.environ.get("SPARSITY_FULL_TAG", "sparsity_full") + ".jsonl")
PARTIAL = RESULTS.with_name(RESULTS.stem + "_partial.jsonl")  # sparsify records written before evaluation
TMP = ROOT / "bench" / "results" / "tmp"
LLMC_PY = "/work/venv-llmc/bin/python"
CALIB_N, CALIB_L, EVAL_L, EVAL_W = 128, 512, 512, 64
if os.environ.get("SPARSITY_FULL_SMOKE"):  # the whole pipeline on 2 windows, results under tmp/ (a smoke test)
    CALIB_N, EVAL_W = 2, 2
    RESULTS = TMP / "sparsity_full_smoke.jsonl"
    PARTIAL = TMP / "sparsity_full_smoke_partial.jsonl"
    TMP = TMP / "smoke"
PATTERNS = ["2:4", "0.5", "4:8", "0.6"]
GRAN = {"magnitude": "layer", "sparsegpt": "layer", "wanda": "row", "mrp": "row"}  # as bench/sparsity.py
# job methods that are a method with options: the same method, another setting (e.g. mrp's direct solver)
VARIANTS = {"mrp-direct": ("mrp", {"solver": "direct"})}

# most important comparisons first (each SparseGPT run next to its mrp run: similar machine load)
QUEUE = (["dense@-#0", "sparsegpt@2:4#0", "mrp@2:4#0", "llmc-sparsegpt@2:4#0",
          "sparsegpt@0.5#0", "mrp@0.5#0", "sparsegpt@4:8#0", "mrp@4:8#0", "sparsegpt@0.6#0", "mrp@0.6#0",
          "sparsegpt@0.5#1", "mrp@0.5#1", "sparsegpt@0.5#2", "mrp@0.5#2"]
         + [f"magnitude@{p}#0" for p in PATTERNS] + [f"wanda@{p}#0" for p in PATTERNS]
         + ["wanda@0.5#1", "wanda@0.5#2"]
         + [f"llmc-sparsegpt@{p}#0" for p in PATTERNS[1:]] + [f"llmc-wanda@{p}#0" for p in PATTERNS])


def parse(job):
    mp, seed = job.split("#")
    method, pattern = mp.split("@")
    return method, pattern, int(seed)


def label(pattern):
    return pattern if ":" in pattern or pattern == "-" else f"{float(pattern):.0%}"


def done_jobs():
    if not RESULTS.exists():
        return set()
    return {r["job"] for r in map(json.loads, RESULTS.read_text().splitlines()) if r.get("ppl") is not None}


def loadavg():
    return os.getloadavg()[0]


def cpu_name():
    """The CPU model and the matrix/vector extensions that decide these timings (AMX, AVX-512, AVX2)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown")
    flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), []))
    ext = next((e for e, f in (("AMX", "amx_tile"), ("AVX-512", "avx512f"), ("AVX2", "avx2")) if f in flags), "")
    return f"{model}, {ext}" if ext else model


# records written before the ``cpu`` field existed: which machine ran them (from the sessions' notes)
CPU_BEFORE_FIELD = {"sparsity_full": "earlier machine (AMX)", "sparsity_full_pcg": "AMD EPYC, AVX2"}


def git_rev():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def job(args):
    """One of our methods (or the dense model, or evaluation of an llm-compressor output) in this process."""
    import torch
    sys.path.insert(0, str(ROOT / "bench"))
    from fxprune.data import evaluation_windows, resolve
    from fxprune.evaluation.perplexity import perplexity
    from sparsity_data import calibration_windows
    torch.set_num_threads(1)
    method, pattern, seed = parse(args.job)
    rec = {"job": args.job, "method": method, "pattern": label(pattern), "seed": seed, "git": git_rev(),
           "torch": torch.__version__, "cpu": cpu_name(), "load_start": loadavg(),
           "protocol": f"calib C4 train head {CALIB_N}x{CALIB_L} (seed {seed}); WikiText-2 L={EVAL_L}, first {EVAL_W} "
                       f"windows; 1 thread"}
    if method.startswith("llmc-"):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        out = TMP / f"llmc_{method[5:]}_{pattern}_s{seed}"
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(TMP / f"llmc_in_s{seed}")
        run = json.loads((out / "llmc_run.json").read_text())
        rec.update({"sparsify_wall_s": run["wall_s"], "sparsify_cpu_s": run["cpu_s"], "peak_rss_mb": run["peak_rss_mb"],
                    "llmc": run})
        lin = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
        rec["sparsity"] = sum(int((w == 0).sum()) for w in lin) / sum(w.numel() for w in lin)
    else:
        import fxprune
        lm = fxprune.load("smollm2")
        model, tok = lm.model, lm.tokenizer
        if method != "dense":
            base, opts = VARIANTS.get(method, (method, {}))
            sparsity = pattern if ":" in pattern else {"ratio": float(pattern), "granularity": GRAN[base]}
            calib = torch.cat(calibration_windows(resolve("c4"), tok, CALIB_N, CALIB_L, seed=seed))
            recipe = {"name": f"{method}-{pattern}", "calibration": {"samples": CALIB_N, "seq_len": CALIB_L,
                                                                    "seed": seed, "batch_size": 8},
                      "steps": [{base: {"sparsity": sparsity, **opts}}]}
            t, c = time.perf_counter(), time.process_time()
            res = fxprune.prune(model, recipe, calib)
            step = res.report["steps"][0]
            rec.update({"sparsify_wall_s": time.perf_counter() - t, "sparsify_cpu_s": time.process_time() - c,
                        "sparsity": step["passes"][-1]["sparsity_selected_linears"],
                        "config": repr(fxprune.load_recipe(recipe).steps[0].method),
                        "granularity": None if ":" in pattern else GRAN[base],
                        "sum_output_error": sum(l["output_error"] or 0 for l in step["layers"])})
        # peak RSS through loading and sparsification (what llm-compressor's prune process measures)
        rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(PARTIAL, "a") as f:  # the sparsify record before the (long) evaluation
            f.write(json.dumps(rec) + "\n")
    t = time.perf_counter()
    rec["ppl"] = perplexity(model, evaluation_windows(tok, "wikitext2", EVAL_L, EVAL_W).ids, batch_size=4,
                            progress=False).ppl
    rec["eval_wall_s"] = time.perf_counter() - t
    if not method.startswith("llmc-"):
        rec["peak_rss_with_eval_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec["load_end"] = loadavg()
    with open(RESULTS, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def sh(cmd, env=None):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, cwd=ROOT, env=env)


def run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    TMP.mkdir(parents=True, exist_ok=True)
    queue = args.jobs or QUEUE
    for j in queue:
        if j in done_jobs():
            continue
        if args.stop_after and time.strftime("%H:%M", time.gmtime()) >= args.stop_after:
            print(f"--stop-after {args.stop_after}: not starting {j}", flush=True)
            break
        method, pattern, seed = parse(j)
        print(f"=== {j} at {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {loadavg():.1f}", flush=True)
        if method.startswith("llmc-"):
            inp = TMP / f"llmc_in_s{seed}"
            if not (inp / "calib_ids.pt").exists():
                sh([sys.executable, "bench/llmc_peer.py", "export", "--out", inp, "--samples", CALIB_N,
                    "--seqlen", CALIB_L, "--seed", seed], env)
            out = TMP / f"llmc_{method[5:]}_{pattern}_s{seed}"
            if not (out / "llmc_run.json").exists():
                sh([LLMC_PY, "bench/llmc_peer.py", "prune", "--inp", inp, "--method", method[5:], "--pattern", pattern,
                    "--out", out, "--threads", 1], {**env, "HF_HUB_OFFLINE": "1"})
        sh([sys.executable, "bench/sparsity_full.py", "job", j], env)


def render(args):
    """The table of RESULTS; ``--merge TAG...``: records of other results files (e.g. a rerun on another
    machine) replace RESULTS' for the same job, in order, into ``<RESULTS stem>_merged.md``."""
    files = [RESULTS] + [RESULTS.with_name(t + ".jsonl") for t in (args.merge or [])]
    by = {}
    if PARTIAL.exists():  # sparsified, evaluation not (yet) recorded: shown with PPL "pending"
        for r in map(json.loads, PARTIAL.read_text().splitlines()):
            by[(r["method"], r["pattern"], r["seed"])] = {**r, "ppl": None, "_src": RESULTS.stem}
    for f in files:
        for r in map(json.loads, f.read_text().splitlines()):
            by[(r["method"], r["pattern"], r["seed"])] = {**r, "_src": f.stem}  # last wins
    dense = by.get(("dense", "-", 0))
    pats = ["2:4", "4:8", "50%", "60%"]
    names = [("magnitude", "magnitude"), ("wanda", "Wanda (ours)"), ("llmc-wanda", "Wanda (llm-compressor 0.14.0.1)"),
             ("sparsegpt", "SparseGPT (ours)"), ("llmc-sparsegpt", "SparseGPT (llm-compressor 0.14.0.1)"),
             ("mrp", "**multiple-removal, exact (`mrp`)**"), ("mrp-direct", "mrp, direct solver (one Cholesky per row)")]
    head = (f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32), dense PPL "
            + (f"{dense['ppl']:.3f}" if dense else "(not run)")
            + f"; calibration C4 train head {CALIB_N} x {CALIB_L} tokens (seed 0 unless noted); WikiText-2 raw "
            f"test, L={EVAL_L}, first {EVAL_W} windows, token-level PPL; 1 thread per process, on a shared 2-core "
            "machine (2026-12-01: other agents' jobs beside it; 2026-12-02, machine [A] where marked: two job queues "
            "and 1-2 other single-thread benchmarks beside each job; afternoon and evening, machine [B]: two "
            "single-thread jobs at a time; the load averages below say how busy). Cells: PPL (sparsify wall s / sparsify CPU s / peak RSS GiB of the "
            f"process through model loading and sparsification, evaluation excluded). Source: "
            + ", ".join(str(f.relative_to(ROOT)) for f in files) + (" (later files replace earlier ones job by job)"
                                                                   if len(files) > 1 else "") + ".")
    out = [head, "", "| method | " + " | ".join(pats) + " |", "|---|" + "---|" * len(pats)]

    machine = lambda r: r.get("cpu") or CPU_BEFORE_FIELD.get(r["_src"], "unknown")  # noqa: E731
    rank = {f.stem: i for i, f in enumerate(files)}  # letters in the order of the files (oldest first)
    machines = list(dict.fromkeys(machine(r) for r in sorted(by.values(), key=lambda r: rank[r["_src"]])))
    mark = {m: f" [{chr(65 + i)}]" if len(machines) > 1 else "" for i, m in enumerate(machines)}

    def cell(r):
        if r is None:
            return "—"
        ppl = "PPL pending" if r["ppl"] is None else f"{r['ppl']:.2f}"
        solver = ""
        if r["method"].startswith("mrp"):  # the refit solver (before the field existed: one Cholesky per row)
            solver = " pcg" if "solver='pcg'" in r.get("config", "") else " direct"
        return (f"{ppl} ({r['sparsify_wall_s']:.0f} / {r['sparsify_cpu_s']:.0f} / "
                f"{r['peak_rss_mb'] / 1024:.1f}){mark[machine(r)]}{solver}")
    for m, name in names:
        out.append(f"| {name} | " + " | ".join(cell(by.get((m, p, 0))) for p in pats) + " |")

    def ratio_row(title, fn):
        cells = []
        for p in pats:
            try:
                cells.append(fn(p))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("—")
        out.append(f"| *{title}* | " + " | ".join(cells) + " |")
    g = lambda m, p, s=0: by[(m, p, s)]  # noqa: E731
    ratio_row("mrp PPL vs our SparseGPT", lambda p: f"{g('mrp', p)['ppl'] / g('sparsegpt', p)['ppl'] - 1:+.1%}")
    ratio_row("mrp PPL vs llm-compressor SparseGPT",
              lambda p: f"{g('mrp', p)['ppl'] / g('llmc-sparsegpt', p)['ppl'] - 1:+.1%}")

    def time_ratio(p, key, m="mrp"):  # only between two runs on one machine
        a, b = g(m, p), g("sparsegpt", p)
        if machine(a) != machine(b):
            raise KeyError(p)
        return f"{a[key] / b[key]:.2f}×"
    ratio_row("mrp / our SparseGPT wall time", lambda p: time_ratio(p, "sparsify_wall_s"))
    ratio_row("mrp / our SparseGPT CPU time", lambda p: time_ratio(p, "sparsify_cpu_s"))
    ratio_row("llm-compressor SparseGPT / our SparseGPT CPU time",
              lambda p: time_ratio(p, "sparsify_cpu_s", "llmc-sparsegpt"))
    if len(machines) > 1:
        out += ["", "Machines (times are comparable only within one, perplexities across them; time ratios only "
                "within one): " + "; ".join(f"[{chr(65 + i)}] {m}" for i, m in enumerate(machines)) + "."]
    out += ["", "1-minute load average of the 2-core machine at each job's start / end (wall times scale with it; "
            "CPU times much less): " + "; ".join(f"{k[0]}@{k[1]}#{k[2]} {r['load_start']:.1f} / "
                                                   + (f"{r['load_end']:.1f}" if "load_end" in r else "?")
                                                   for k, r in by.items() if "load_start" in r)]
    # seeds at 50%
    out += ["", "50% unstructured over calibration seeds 0, 1, 2 (PPL; mean, spread = max − min):", "",
            "| method | seed 0 | seed 1 | seed 2 | mean | spread |", "|---|---|---|---|---|---|"]
    for m, name in names:
        rs = [by.get((m, "50%", s)) for s in range(3)]
        rs = [r if r is not None and r["ppl"] is not None else None for r in rs]
        if sum(r is not None for r in rs) < 2:
            continue
        v = [r["ppl"] for r in rs if r is not None]
        out.append(f"| {name} | " + " | ".join(f"{r['ppl']:.2f}{mark[machine(r)]}" if r else "—" for r in rs)
                   + f" | {statistics.mean(v):.2f} | {max(v) - min(v):.2f} |")
    both = [(by.get(("mrp", "50%", s)), by.get(("sparsegpt", "50%", s))) for s in range(3)]
    diffs = [a["ppl"] - b["ppl"] for a, b in both if a and b and a["ppl"] is not None and b["ppl"] is not None]
    if diffs:
        out.append("")
        out.append("mrp − SparseGPT at 50%, per seed: " + ", ".join(f"{x:+.2f}" for x in diffs))
    text = "\n".join(out) + "\n"
    (RESULTS.with_name(RESULTS.stem + "_merged.md") if args.merge else RESULTS.with_suffix(".md")).write_text(text)
    print(text)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("jobs", nargs="*", help="METHOD@PATTERN#SEED (default: the whole queue)")
    r.add_argument("--stop-after", help="HH:MM UTC: start no job after this time")
    j = sub.add_parser("job")
    j.add_argument("job")
    rd = sub.add_parser("render")
    rd.add_argument("--merge", nargs="*", metavar="TAG", help="other results files (bench/results/TAG.jsonl) "
                    "whose records replace this one's job by job; writes <stem>_merged.md")
    args = ap.parse_args()
    {"run": run, "job": job, "render": render}[args.cmd](args)


if __name__ == "__main__":
    main()
