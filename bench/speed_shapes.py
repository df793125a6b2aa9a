"""Benchmark: does the *shape* of a structured prune cost speed in llama.cpp? Two controlled experiments
on SmolLM2-135M, both without calibration (only FFN widths matter for speed, not which channels):

``profiles``: per-layer FFN width profiles with the SAME total number of FFN channels (30 x 512 = 15360
by default, i.e. one third of the dense FFN) - uniform 512 everywhere against a ramp, an alternating
bimodal profile, an extreme alternating profile (32 / 992) and, optionally, the profile of a real
pruned checkpoint rescaled to the same total. Same parameter count, same FLOPs: any speed difference is
the cost of per-layer widths themselves (kernel shapes, thread chunking, cache footprint). This is the
issue's "a per-layer-width model is no slower than a uniform-width model of the same parameter count".

``sweep``: uniform FFN widths W (e.g. 32 512 1024 1536) to fit ``t/token = a + b * FFN weights``. The
intercept ``a`` is the time that pruning FFN channels cannot remove (attention, LM head, norms, graph
overhead); it bounds the reachable speedup: with FFN weights cut to a fraction r of dense, the best
possible speedup is ``(a + b F) / (a + b r F)``, which is compared with the ideal of the weight-count
cost model (``(N + F) / (N + r F)`` with N the non-FFN matmul weights read per token).

Models are made by keeping the first ``w_l`` FFN channels of layer l (``fxprune.surgery.prune`` on
the analyser's FFN groups, no verification) and exporting with ``fxprune.export.export_gguf`` at each
dtype; widths are multiples of 32, so no padding. Timing reuses ``bench/speed.py``'s llama.cpp runner
and protocol: prefill of a 512-token WikiText-2 prompt, decode b=1 of 128 greedy tokens after 16,
``--threads`` threads, interleaved repeats in a fresh random order, process CPU clock (with one
thread: the work done, whatever else runs on a shared machine) and wall clock both recorded.

    .venv/bin/python bench/speed_shapes.py profiles --repeats 9 --tag speed_shapes
    .venv/bin/python bench/speed_shapes.py sweep 32 512 1024 1536 --repeats 9 --tag speed_width_fit

Results: ``bench/results/{tag}.json`` (raw times) and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.speed import LlamaCppRunner, _stats  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE.parent / "out" / "speed_shapes"


def profiles(layers: int, mean: int, step: int = 32) -> dict[str, list[int]]:
    """Width profiles with ``layers * mean`` channels in total, every width a multiple of ``step``."""
    lo, hi = mean // 4, mean + 3 * mean // 4
    ramp = [round((lo + (hi - lo) * i / (layers - 1)) / step) * step for i in range(layers)]
    ramp[-1] += layers * mean - sum(ramp)  # exact total
    out = {"uniform": [mean] * layers, "ramp": ramp,
           "bimodal": [mean // 2 if i % 2 else mean + mean // 2 for i in range(layers)],
           "extreme": [step if i % 2 else 2 * mean - step for i in range(layers)]}
    for name, w in out.items():
        assert sum(w) == layers * mean and all(x % step == 0 and x > 0 for x in w), (name, w)
    return out


def rescaled(widths: list[int], total: int, step: int = 32) -> list[int]:
    """``widths`` scaled to sum to ``total`` with multiples of ``step`` (largest remainders get the rest)."""
    s = sum(widths)
    raw = [w * total / s for w in widths]
    out = [max(step, int(r // step) * step) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)
    i = 0
    while sum(out) < total:
        out[order[i % len(order)]] += step
        i += 1
    while sum(out) > total:
        j = max(range(len(out)), key=lambda k: out[k])
        out[j] -= step
    return out


def checkpoint_widths(path: Path) -> list[int]:
    """Per-layer FFN widths of a pruned checkpoint (``down_proj`` input widths in layer order)."""
    from fxprune.loading import load_model
    m = load_model(str(path)).model
    return [layer.mlp.down_proj.in_features for layer in m.model.layers]


def build(name: str, widths: list[int], dtypes) -> dict[str, Path]:
    """GGUF files of SmolLM2 with layer l's FFN cut to its first ``widths[l]`` channels."""
    WORK.mkdir(parents=True, exist_ok=True)
    files = {dt: WORK / f"{name}.{dt}.gguf" for dt in dtypes}
    if all(f.is_file() for f in files.values()):
        return files
    from fxprune.analysis.analyser import analyse
    from fxprune.export import export_gguf
    from fxprune.kinds import Kind
    from fxprune.loading import load_model, smollm2_path
    from fxprune.surgery import prune
    model = load_model("smollm2").model
    analysis = analyse(model)
    ffn = [g for g in analysis.groups if g.kind == Kind.FFN]
    if len(ffn) != len(widths):
        raise SystemExit(f"{name}: {len(widths)} widths for {len(ffn)} FFN groups")
    plan = {g.id: range(w) for g, w in zip(ffn, widths) if w < g.units}
    if plan:
        prune(model, plan, analysis=analysis, verify=False)
    for dt, f in files.items():
        if not f.is_file():
            export_gguf(model, f, dt, vocab_from=smollm2_path(), name=name, log=lambda *a: None)
    return files


def time_models(files: dict[str, dict[str, Path]], dtypes, args) -> list[dict]:
    """Interleaved repeats over every (model, dtype): prefill and decode b=1, CPU and wall clocks."""
    from fxprune.data import evaluation_windows
    from fxprune.loading import load_model
    tok = load_model("smollm2").tokenizer
    ids = evaluation_windows(tok, "wikitext2", 512, 2).ids
    prompt, dprompt = ids[0], ids[1:2, :16]
    runners = {(m, dt): LlamaCppRunner(f[dt], args.threads, 512, 16, 128, [1]) for m, f in files.items()
               for dt in dtypes}
    for r in runners.values():  # warm-up
        r.prefill(prompt)
        r.decode(dprompt)
    rng, times = random.Random(args.seed), []
    for rep in range(args.repeats):
        order = list(runners)
        rng.shuffle(order)
        for key in order:
            r = runners[key]
            (pw, pc), (dw, dc) = r.prefill(prompt), r.decode(dprompt)
            times.append({"repeat": rep, "model": key[0], "dtype": key[1], "prefill_s": pw, "prefill_cpu_s": pc,
                          "decode_s": dw, "decode_cpu_s": dc})
        print(f"repeat {rep + 1}/{args.repeats} at {time.strftime('%H:%M:%S')}", flush=True)
    for r in runners.values():
        r.close()
    return times


def rates(times, clock="cpu") -> dict:
    """(model, dtype, phase) -> {repeat: tokens/s}."""
    sfx = "_cpu_s" if clock == "cpu" else "_s"
    out = {}
    for t in times:
        for phase, n in (("prefill", 512), ("decode", 128)):
            out.setdefault((t["model"], t["dtype"], phase), {})[t["repeat"]] = n / t[phase + sfx]
    return out


def ratio_stats(r, a, b):
    """Per-repeat ratio of tok/s of a over b: median [min, max]."""
    return _stats([r[a][k] / r[b][k] for k in r[a] if k in r[b]])


def fit(xs, ys):
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def _header(args, extra):
    return [f"Command: `{' '.join([sys.executable] + sys.argv)}`. {platform.machine()} {os.cpu_count()} cores "
            f"(shared; load average at start {os.getloadavg()[0]:.1f}), {args.threads} thread(s), {args.repeats} "
            f"interleaved repeats (order shuffled per repeat), llama-cpp-python default context (f16 KV cache). "
            f"Prefill: 512-token WikiText-2 prompt; decode: 128 greedy tokens at batch 1 after a 16-token prompt. "
            f"Rates are tokens per second of process CPU time (wall clock in the JSON). {extra}", ""]


def run_profiles(args):
    layers, mean = 30, args.mean
    prof = profiles(layers, mean)
    if args.from_checkpoint:
        prof["checkpoint"] = rescaled(checkpoint_widths(Path(args.from_checkpoint)), layers * mean)
    files = {name: build(f"{name}-{mean}", w, args.dtypes) for name, w in prof.items()}
    times = time_models(files, args.dtypes, args)
    r = rates(times)
    lines = ["# Per-layer FFN width profiles at equal parameter count (bench/speed_shapes.py profiles)", ""]
    lines += _header(args, f"Every model keeps {layers * mean} FFN channels in total ({mean} per layer on "
                           "average, dense 1536); attention, embeddings and LM head untouched.")
    lines += ["| profile | widths (min..max) |", "|---|---|"]
    lines += [f"| {n} | {min(w)}..{max(w)}: {' '.join(map(str, w))} |" for n, w in prof.items()]
    lines += ["", "| dtype | phase | profile | tok/s median [min, max] | / uniform, per-repeat median [min, max] |",
              "|---|---|---|---|---|"]
    summary = {}
    for dt in args.dtypes:
        for phase in ("prefill", "decode"):
            for n in prof:
                s = _stats(list(r[(n, dt, phase)].values()))
                u = ratio_stats(r, (n, dt, phase), ("uniform", dt, phase))
                summary[f"{n}|{dt}|{phase}"] = {"tok_s": s, "over_uniform": u}
                lines.append(f"| {dt} | {phase} | {n} | {s['median']:.1f} [{s['min']:.1f}, {s['max']:.1f}] | "
                             f"{u['median']:.3f} [{u['min']:.3f}, {u['max']:.3f}] |")
    return {"profiles": prof, "times": times, "summary": summary}, lines


def run_sweep(args):
    from fxprune.loading import load_model
    m = load_model("smollm2").model
    layers = len(m.model.layers)
    hidden = m.config.hidden_size
    lin = sum(p.numel() for n, p in m.named_parameters() if p.dim() == 2 and "embed" not in n)
    ffn_dense = sum(p.numel() for n, p in m.named_parameters() if ".mlp." in n and p.dim() == 2)
    head = m.get_output_embeddings().weight.numel()  # tied: read once per token at decode
    non_ffn = lin - ffn_dense + head
    files = {f"w{w}": build(f"uniform-{w}", [w] * layers, args.dtypes) for w in args.widths}
    times = time_models(files, args.dtypes, args)
    r = rates(times)
    lines = ["# Where decode and prefill time goes: uniform FFN width sweep (bench/speed_shapes.py sweep)", ""]
    lines += _header(args, f"Uniform FFN widths {args.widths} (dense 1536); fit t/token = a + b * (FFN weights).")
    lines += [f"Matmul weights read per token: FFN {ffn_dense / 1e6:.2f}M at dense, the rest (attention + "
              f"tied LM head) {non_ffn / 1e6:.2f}M: the weight-count model says "
              f"{non_ffn / (non_ffn + ffn_dense):.1%} of dense decode time cannot be pruned away by FFN "
              f"channels.", "",
              "| dtype | phase | tok/s by width | fixed a (ms/token) | a share of dense | weight-count share | "
              "reachable / ideal speedup, FFN at 1/2 | at 1/3 |", "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for dt in args.dtypes:
        for phase in ("prefill", "decode"):
            xs = [layers * 3 * hidden * w for w in args.widths]
            ys = [1 / _stats(list(r[(f"w{w}", dt, phase)].values()))["median"] for w in args.widths]
            a, b = fit(xs, ys)
            dense_t = a + b * ffn_dense
            share = a / dense_t
            row = {"a_s": a, "b_s_per_weight": b, "fixed_share": share,
                   "tok_s": {w: 1 / y for w, y in zip(args.widths, ys)}}
            cells = []
            for frac in (0.5, 1 / 3):
                reach = dense_t / (a + b * frac * ffn_dense)
                ideal = (non_ffn + ffn_dense) / (non_ffn + frac * ffn_dense)
                row[f"reachable_{frac:.2f}"], row[f"ideal_{frac:.2f}"] = reach, ideal
                cells.append(f"{reach:.3f} / {ideal:.3f}")
            summary[f"{dt}|{phase}"] = row
            tps = ", ".join(f"{w}: {1 / y:.1f}" for w, y in zip(args.widths, ys))
            lines.append(f"| {dt} | {phase} | {tps} | {1e3 * a:.3f} | {share:.1%} | "
                         f"{non_ffn / (non_ffn + ffn_dense):.1%} | {cells[0]} | {cells[1]} |")
    return {"widths": args.widths, "non_ffn_weights": non_ffn, "ffn_weights": ffn_dense, "times": times,
            "summary": summary}, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("profiles")
    pp.add_argument("--mean", type=int, default=512)
    pp.add_argument("--from-checkpoint", default=None, help="also time this pruned checkpoint's FFN profile, "
                    "rescaled to the same total")
    ps = sub.add_parser("sweep")
    ps.add_argument("widths", type=int, nargs="+")
    for p in (pp, ps):
        p.add_argument("--dtypes", nargs="+", default=["f16", "q4_0"])
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--repeats", type=int, default=9)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tag", default=None)
    args = ap.parse_args()
    tag = args.tag or ("speed_shapes" if args.cmd == "profiles" else "speed_width_fit")
    res, lines = run_profiles(args) if args.cmd == "profiles" else run_sweep(args)
    res["command"] = " ".join([sys.executable] + sys.argv)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(res, indent=1))
    (RESULTS / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
