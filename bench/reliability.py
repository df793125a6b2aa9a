"""Issue 14 measurements: fuzz counts, kill points, reproducibility, memory estimates vs measured peaks.

    python bench/reliability.py fuzz --examples 250     # per fuzz strategy (4 strategies), fresh randomness
    python bench/reliability.py kill --trials 40        # per signal (KILL, INT, TERM) + --cli N CLI kills
    python bench/reliability.py repro [--smollm2]       # recipes x (1 thread, 1 thread other hash seed, 2 threads)
    python bench/reliability.py memory                  # preflight estimate vs measured peak RSS
    python bench/reliability.py report                  # bench/results/reliability.md from the JSON files

Each part writes bench/results/reliability_<part>.json with its command line, settings and counts.
Run one at a time (the machine is shared): OMP_NUM_THREADS=1 except where threads are the variable.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def save(part: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python " + " ".join(sys.argv), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               **payload}
    p = RESULTS / f"reliability_{part}.json"
    p.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {p}")
    return p


# ----------------------------------------------------------------------------------- fuzz
def fuzz(args):
    os.environ["FXPRUNE_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ["FXPRUNE_FUZZ_RANDOM"] = "1"
    import torch
    torch.set_num_threads(1)
    import test_fuzz_cli as T
    from harness_fuzz import make_sandbox, run_case
    outcomes = []

    def counting(argv, sandbox, out):
        o = run_case(argv, sandbox, out)
        outcomes.append((current[0], o))
        return o

    T.run_case = counting
    T.check = lambda o: None  # count, do not stop
    sb = Path(tempfile.mkdtemp(prefix="fxfuzz-"))
    info = make_sandbox(sb)
    calib = info["data"] / "c4" / "c4-train.00000-of-01024.first1000.jsonl"
    (sb / "small.yaml").write_text(T.SMALL.format(calib=calib))
    info.update(sb=sb, calib=calib)
    box = T.Box(info)
    current = [""]
    per = {}
    for name in ("test_random_recipes", "test_random_and_corrupted_model_files", "test_random_calibration_files",
                 "test_random_argument_values"):
        current[0] = name
        t0 = time.perf_counter()
        getattr(T, name)(box=box)
        per[name] = round(time.perf_counter() - t0, 1)
        print(name, sum(1 for n, _ in outcomes if n == name), "cases", per[name], "s", flush=True)
    def error_type(o):
        line = [l for l in o.stderr.splitlines() if ": error: " in l]
        return line[-1].split(": error: ", 1)[1].split(":", 1)[0] if line else None
    rows = [{"strategy": n, "argv": o.argv, "rc": o.rc, "problems": o.problems, "error_type": error_type(o),
             "stderr_tail": o.stderr[-400:] if o.problems else ""} for n, o in outcomes]
    summary = {
        "cases": len(rows),
        "exit_0": sum(r["rc"] == 0 for r in rows),
        "exit_2_typed": sum(r["rc"] == 2 and not r["problems"] for r in rows),
        "tracebacks_or_internal_errors": sum(any(p == "traceback" or p.startswith("exit code") for p in r["problems"])
                                             for r in rows),
        "touched_outside_out": sum(any(p.startswith("touched") for p in r["problems"]) for r in rows),
        "other_problems": sum(any(p.startswith("not one typed") for p in r["problems"]) for r in rows),
        "per_strategy_cases": {n: sum(1 for r in rows if r["strategy"] == n) for n in per},
        "per_strategy_seconds": per,
    }
    summary["error_types"] = {}
    for r in rows:
        if r["error_type"]:
            summary["error_types"][r["error_type"]] = summary["error_types"].get(r["error_type"], 0) + 1
    print(json.dumps(summary, indent=1))
    save("fuzz", {"settings": {"examples_per_strategy": args.examples, "threads": 1}, "summary": summary,
                  "failures": [r for r in rows if r["problems"]][:50]})


# ----------------------------------------------------------------------------------- kill
def kill(args):
    from harness_kill import kill_once
    rng = random.Random(args.seed)
    trials = []
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
        for k in range(args.trials):
            work = Path(tempfile.mkdtemp(prefix="fxkill-"))
            r = kill_once(work, sig, args.max_delay, rng)
            trials.append({"signal": sig.name, "delay_s": round(r.delay, 3), "state": r.state,
                           "last_reported": r.last_reported, "leftovers": r.leftovers, "after_clean": r.after_clean,
                           "notes_kept": r.notes_kept, "rc": r.returncode})
            print(sig.name, k, r.state, r.leftovers, r.after_clean, flush=True)
            subprocess.run(["rm", "-rf", str(work)])
    cli = [cli_kill(rng, k) for k in range(args.cli)]

    def count(rows, sig):
        rows = [t for t in rows if t["signal"] == sig]
        return {"kill_points": len(rows),
                "checkpoints_damaged": sum(t["state"] == "damaged" for t in rows),
                "user_file_lost": sum(not t["notes_kept"] for t in rows),
                "temporaries_left_before_next_run": sum(bool(t["leftovers"]) for t in rows),
                "temporaries_left_after_next_run": sum(bool(t["after_clean"]) for t in rows),
                "in_flight_commit_completed": sum(t["state"] != t["last_reported"] for t in rows)}
    summary = {s: count(trials, s) for s in ("SIGKILL", "SIGINT", "SIGTERM")}
    summary["cli"] = {"kill_points": len(cli), "partial_outputs": sum(c["partial"] for c in cli),
                      "temporaries_left_after_next_run": sum(bool(c["after_clean"]) for c in cli),
                      "outcomes": {o: sum(c["outcome"] == o for c in cli) for o in {c["outcome"] for c in cli}}}
    print(json.dumps(summary, indent=1))
    save("kill", {"settings": {"trials_per_signal": args.trials, "max_delay_s": args.max_delay, "seed": args.seed,
                               "cli_kills": args.cli},
                  "summary": summary, "trials": trials, "cli": cli})


def cli_kill(rng, k):
    """SIGKILL / SIGINT a whole ``fxprune prune`` (tiny:llama, over an existing checkpoint with
    --overwrite) at a random moment; the output must be the old or a complete new checkpoint."""
    from harness_kill import tree
    from fxprune.output import check_output
    work = Path(tempfile.mkdtemp(prefix="fxclikill-"))
    recipe = work / "r.yaml"
    recipe.write_text("method: structured\ncriterion: flap\nreconstruction: liar\ntarget: 0.3\n"
                      "calib_source: generated\ncalib_samples: 4\ncalib_seq_len: 16\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "fxprune", "prune", "tiny:llama", "--recipe", str(recipe), "--out",
           str(work / "out"), "--overwrite"]
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    old = tree(work / "out")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    full = time.perf_counter() - t0
    sig = rng.choice([signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    delay = rng.uniform(0, full * 1.1)
    time.sleep(delay)
    p.send_signal(sig)
    p.wait()
    now = tree(work / "out") if (work / "out").is_dir() else {}
    from fxprune.output import MANIFEST
    complete_new = False
    if now and now != old:
        m = json.loads(now[MANIFEST])
        import hashlib
        complete_new = all(hashlib.sha256(now[f]).hexdigest() == v["sha256"] for f, v in m["files"].items())
    outcome = "old" if now == old else ("new" if complete_new else "partial")
    leftovers = sorted(x.name for x in work.iterdir() if x.name not in ("out", "r.yaml"))
    check_output(work / "out", overwrite=True)
    after = sorted(x.name for x in work.iterdir() if x.name not in ("out", "r.yaml"))
    subprocess.run(["rm", "-rf", str(work)])
    print("cli", k, sig.name, round(delay, 2), outcome, leftovers, after, flush=True)
    return {"signal": sig.name, "delay_s": round(delay, 2), "run_s": round(full, 2), "outcome": outcome,
            "partial": outcome == "partial", "leftovers": leftovers, "after_clean": after, "rc": p.returncode}


# ----------------------------------------------------------------------------------- repro
TINY_RUNS = {
    "flap-liar": ("structured", {"criterion": "flap", "reconstruction": "liar", "target": 0.3}),
    "goa-liar-ffn-global": ("recipe", "goa-liar-ffn-global-20"),
    "olica-20": ("recipe", "olica-20"),
    "magnitude-50": ("sparsity", "magnitude-50"),
    "wanda-2of4": ("sparsity", "wanda-2of4"),
    "sparsegpt-2of4": ("sparsity", "sparsegpt-2of4"),
    "mrp-2of4": ("sparsity", "mrp-2of4"),
}
VARIANTS = [("t1", "1", "0"), ("t1-hashseed", "1", "4242"), ("t2", "2", "0")]


def _argv(kind, spec, model, out, work, samples, seqlen):
    import yaml
    if kind == "sparsity":
        return ["sparsify", model, "--recipe", spec, "--calib", "c4", "--samples", str(samples), "--seqlen",
                str(seqlen), "--out", str(out)]
    if kind == "recipe":
        d = yaml.safe_load((REPO / "fxprune" / "recipes" / f"{spec}.yaml").read_text())
    else:
        d = {"method": "structured", **spec}
    d.update(calib_source="c4", calib_samples=samples, calib_seq_len=seqlen)
    r = work / f"{out.name}.yaml"
    r.write_text(yaml.safe_dump(d))
    return ["prune", model, "--recipe", str(r), "--out", str(out)]


def repro(args):
    from fxprune.output import tensor_digests
    model = "smollm2" if args.smollm2 else "tiny:llama"
    runs = {k: v for k, v in TINY_RUNS.items() if not args.smollm2 or k in ("goa-liar-ffn-global", "sparsegpt-2of4")}
    samples, seqlen = (args.samples, args.seqlen)
    work = Path(tempfile.mkdtemp(prefix="fxrepro-"))
    rows = []
    for name, (kind, spec) in runs.items():
        digests = {}
        for tag, threads, hashseed in VARIANTS:
            out = work / f"{name}-{tag}"
            env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONHASHSEED=hashseed,
                       PYTHONPATH=str(REPO))
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "fxprune", "--memory-limit", "0"] +
                               _argv(kind, spec, model, out, work, samples, seqlen),
                               env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(name, tag, "FAILED", r.stderr[-500:], flush=True)
                digests[tag] = None
                continue
            digests[tag] = tensor_digests(out)
            print(name, tag, round(time.perf_counter() - t0, 1), "s", flush=True)
        base = digests["t1"]
        for tag in ("t1-hashseed", "t2"):
            d = digests.get(tag)
            row = {"model": model, "recipe": name, "compare": f"t1 vs {tag}",
                   "tensors": len(base or {}), "differing": None if not (base and d) else
                   sorted(k for k in base if base[k] != d.get(k))}
            row["n_differing"] = None if row["differing"] is None else len(row["differing"])
            rows.append(row)
            print(row["recipe"], row["compare"], row["n_differing"], "of", row["tensors"], flush=True)
    subprocess.run(["rm", "-rf", str(work)])
    summary = {"runs_compared": sum(r["n_differing"] is not None for r in rows),
               "same_threads_tensors_differing": sum(r["n_differing"] or 0 for r in rows if "hashseed" in r["compare"]),
               "one_vs_two_threads_tensors_differing": sum(r["n_differing"] or 0 for r in rows if "t2" in r["compare"])}
    print(json.dumps(summary, indent=1))
    save(f"repro_{'smollm2' if args.smollm2 else 'tiny'}",
         {"settings": {"model": model, "calib": f"c4, {samples} x {seqlen}", "variants": VARIANTS},
          "summary": summary, "rows": rows})


# ----------------------------------------------------------------------------------- memory
MEMORY_JOBS = [
    ("eval smollm2 ppl L=512 x8", ["eval", "smollm2", "--ppl", "wikitext2", "--seq-len", "512", "--windows", "8"],
     ("eval", 0, 0, 1, False, 512)),
    ("sparsify smollm2 sparsegpt 2:4, 64 x 512", ["sparsify", "smollm2", "--recipe", "sparsegpt-2of4", "--calib", "c4",
                                                  "--samples", "64", "--seqlen", "512", "--out", "{out}"],
     ("sparsity", 64, 512, 1, False, 0)),
    ("prune smollm2 goa-liar-ffn-global-20, 64 x 128", ["prune", "smollm2", "--recipe", "{recipe}", "--out", "{out}"],
     ("structured", 64, 128, 8, False, 0)),
]


def memory(args):
    import yaml

    from fxprune.preflight import JobSizes, estimate_peak, model_facts
    work = Path(tempfile.mkdtemp(prefix="fxmem-"))
    d = yaml.safe_load((REPO / "fxprune" / "recipes" / "goa-liar-ffn-global-20.yaml").read_text())
    d.update(calib_samples=64, calib_seq_len=128)
    (work / "r.yaml").write_text(yaml.safe_dump(d))
    rows = []
    for k, (name, argv, sizes) in enumerate(MEMORY_JOBS):
        argv = [a.format(out=work / f"out{k}", recipe=work / "r.yaml") for a in argv]
        method, n, L, b, gen, E = sizes
        est = estimate_peak(model_facts(argv[1]), JobSizes(method, n, L, b, gen, E))
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "fxprune"] + argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        err = p.stderr.read()
        peak = usage.ru_maxrss * 1024
        rows.append({"job": name, "exit": os.waitstatus_to_exitcode(status), "estimate_bytes": est.peak,
                     "measured_peak_rss_bytes": peak, "estimate_over_measured": round(est.peak / peak, 2),
                     "terms": est.terms, "seconds": round(time.perf_counter() - t0, 1),
                     "stderr_tail": err[-300:] if os.waitstatus_to_exitcode(status) else ""})
        print(rows[-1]["job"], rows[-1]["exit"], f"estimate {est.peak / 2**30:.2f} GiB measured {peak / 2**30:.2f} GiB",
              flush=True)
    subprocess.run(["rm", "-rf", str(work)])
    save("memory", {"settings": {"threads": 1}, "rows": rows})


# ----------------------------------------------------------------------------------- report
def report(args):
    def load(part):
        p = RESULTS / f"reliability_{part}.json"
        return json.loads(p.read_text()) if p.is_file() else None
    lines = ["# Issue 14: reliability measurements", "",
             "Produced by `bench/reliability.py` (commands and settings in each JSON file beside this one). "
             "The machine was shared by ~7 agents on 2 cores: timings are not comparable, counts are.", ""]
    f = load("fuzz")
    if f:
        s = f["summary"]
        lines += ["## Fuzz (item 7)", "", f"`{f['command']}` ({f['date_utc']} UTC)", "",
                  "| cases tried | exit 0 | exit 2, one typed line | tracebacks / internal errors | files touched outside --out | other |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {s['cases']} | {s['exit_0']} | {s['exit_2_typed']} | {s['tracebacks_or_internal_errors']} | "
                  f"{s['touched_outside_out']} | {s['other_problems']} |", "",
                  "Per strategy: " + ", ".join(f"{k.replace('test_random_', '')} {v}" for k, v in s["per_strategy_cases"].items()), ""]
    k = load("kill")
    if k:
        s = k["summary"]
        lines += ["## Kill test (item 2)", "", f"`{k['command']}` ({k['date_utc']} UTC). A child saves two tiny "
                  "checkpoints alternately over one directory (holding a user file) and is signalled at a random "
                  f"moment (0-{k['settings']['max_delay_s']} s into the save loop).", "",
                  "| signal | kill points | checkpoints damaged | user file lost | temporaries left (before next run) | after next run |",
                  "|---|---:|---:|---:|---:|---:|"]
        for sig in ("SIGKILL", "SIGINT", "SIGTERM"):
            c = s[sig]
            lines.append(f"| {sig} | {c['kill_points']} | {c['checkpoints_damaged']} | {c['user_file_lost']} | "
                         f"{c['temporaries_left_before_next_run']} | {c['temporaries_left_after_next_run']} |")
        c = s["cli"]
        lines += ["", f"Whole `fxprune prune` runs signalled at random moments: {c['kill_points']} kill points, "
                  f"{c['partial_outputs']} partial outputs, outcomes {c['outcomes']}, temporaries left after the "
                  f"next run: {c['temporaries_left_after_next_run']}.", ""]
    for tag in ("tiny", "smollm2"):
        r = load(f"repro_{tag}")
        if not r:
            continue
        s = r["summary"]
        lines += [f"## Reproducibility (item 4): {r['settings']['model']}", "", f"`{r['command']}` ({r['date_utc']} UTC), "
                  f"calibration {r['settings']['calib']}.", "",
                  "| recipe | compared | tensors | differing |", "|---|---|---:|---:|"]
        for row in r["rows"]:
            lines.append(f"| {row['recipe']} | {row['compare']} | {row['tensors']} | {row['n_differing']} |")
        lines += ["", f"Runs compared: {s['runs_compared']}; tensors differing at the same thread count: "
                  f"{s['same_threads_tensors_differing']}; between 1 and 2 threads: "
                  f"{s['one_vs_two_threads_tensors_differing']}.", ""]
    m = load("memory")
    if m:
        lines += ["## Memory estimate vs measured peak (item 6)", "", f"`{m['command']}` ({m['date_utc']} UTC)", "",
                  "| job | estimate | measured peak RSS | estimate / measured |", "|---|---:|---:|---:|"]
        for row in m["rows"]:
            lines.append(f"| {row['job']} | {row['estimate_bytes'] / 2**30:.2f} GiB | "
                         f"{row['measured_peak_rss_bytes'] / 2**30:.2f} GiB | {row['estimate_over_measured']} |")
        lines.append("")
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    p = sub.add_parser("fuzz")
    p.add_argument("--examples", type=int, default=250)
    p = sub.add_parser("kill")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--cli", type=int, default=10)
    p.add_argument("--max-delay", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=14)
    p = sub.add_parser("repro")
    p.add_argument("--smollm2", action="store_true")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=64)
    sub.add_parser("memory")
    sub.add_parser("report")
    args = ap.parse_args()
    {"fuzz": fuzz, "kill": kill, "repro": repro, "memory": memory, "report": report}[args.part](args)


if __name__ == "__main__":
    main()
