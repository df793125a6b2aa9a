"""Benchmark: structured pruning of SmolLM2-135M, every criterion x reconstruction x allocation.

    .venv/bin/python bench/structured.py --targets 0.2 0.3 [--criteria ...] [--recons ...]

Each configuration runs in its own subprocess (so wall time and peak RSS are its own) on the same
fp32 copy of the model (the GGUF dequantised once into bench/results/tmp/smollm2-fp32). Protocol:
calibration = C4 train head, --calib-samples x --calib-len tokens (seed 0); evaluation = WikiText-2
raw test, non-overlapping windows at L=128 and L=512 (first --w128 / --w512 windows), token-level
perplexity. Parameter accounting: "decoder linear" = weights of the prunable groups' linear layers
(q, k, v, o, gate, up, down of the 30 blocks). Results: bench/results/structured.jsonl (one line per
run, appended, resumable) and bench/results/structured.md (table).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL_DIR = RESULTS / "tmp" / "smollm2-fp32"


def prepare_model():
    if (MODEL_DIR / "config.json").is_file():
        return
    from fxprune.loading import load_model
    loaded = load_model("smollm2")
    loaded.model.save_pretrained(MODEL_DIR)
    loaded.tokenizer.save_pretrained(MODEL_DIR)


def one_run(cfg: dict) -> dict:
    """Runs inside the subprocess: prune one configuration and evaluate it."""
    import torch
    torch.set_num_threads(cfg["threads"])
    from fxprune.calibration import Engine
    from fxprune.data import calibration_windows, evaluation_windows, tokenizer_for
    from fxprune.loading import load_model
    from fxprune.pipeline import prune_model
    from fxprune.recipe import load_recipe
    from fxprune.report import find_pass
    loaded = load_model(str(MODEL_DIR))
    tok = tokenizer_for(loaded)
    engine = Engine()  # evaluation: fp32 always
    out = {"config": cfg}
    if cfg["criterion"] != "dense":
        extra = dict(cfg.get("extra", {}))
        stages = int(extra.pop("stages", 1))
        from fxprune.calibration.engine import EngineConfig
        prune_engine = Engine(EngineConfig(precision=extra.pop("engine_precision", "32-true")))
        step = {"criterion": cfg["criterion"], "reconstruction": cfg["reconstruction"],
                "allocation": cfg["allocation"], "kinds": list(cfg["kinds"]), **extra}
        recipe = load_recipe({"calibration": {"source": "c4", "samples": cfg["calib_samples"],
                                              "seq_len": cfg["calib_len"], "seed": 0},
                              "steps": [{"structured": {**step, "target": t}}
                                        for t in stage_targets(cfg["target"], stages)]})
        calib = calibration_windows(tok, recipe.calibration)
        t0 = time.perf_counter()
        res = prune_model(loaded.model, recipe, calib.ids, prune_engine)
        out["prune_seconds"] = time.perf_counter() - t0
        out["params_before"], out["params_after"] = res.report["params_before"], res.report["params_after"]
        allocs = []
        for st in res.report["steps"]:
            try:
                allocs.append(find_pass({"steps": [st]}, "allocate"))
            except KeyError:
                allocs.append(find_pass({"steps": [st]}, "olica_split"))
        # of the recipe's scope in the model as given: the stages' removals over the first stage's scope
        out["achieved_decoder_linear"] = (allocs[0]["achieved"] if len(allocs) == 1 else
                                          sum(a["removed_params"] for a in allocs) / allocs[0]["in_scope_params"])
        out["passes"] = [p for st in res.report["steps"] for p in st["passes"]]
        out["peak_rss_prune_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for L, n in ((128, cfg["w128"]), (512, cfg["w512"])):
        if n:
            w = evaluation_windows(tok, "wikitext2", L, n)
            out[f"ppl_L{L}"] = engine.perplexity(loaded.model, w.ids).ppl
            out[f"eval_windows_L{L}"] = int(w.ids.shape[0])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def stage_targets(target: float, stages: int) -> list[float]:
    """Per-step targets that remove ``target`` of the scope in ``stages`` equal shares: each step's target
    is of the scope *as that step finds it* (a structured step's target is relative to its input)."""
    share, left, out = target / stages, 1.0, []
    for _ in range(stages):
        out.append(share / left)
        left -= share
    return out


def _extra(c: dict) -> str:
    e = c.get("extra") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(e.items())) or "-"


def _calib(c: dict) -> str:
    return f"{c.get('calib_samples', 128)} x {c.get('calib_len', 128)}"


def _key(cfg: dict, kinds) -> tuple:
    """What makes two runs the same configuration (calibration size included: a dense row has none)."""
    calib = (cfg.get("calib_samples", 128), cfg.get("calib_len", 128)) if cfg["criterion"] != "dense" else None
    return (cfg["criterion"], cfg["reconstruction"], cfg["allocation"], cfg["target"], tuple(kinds),
            json.dumps(cfg.get("extra") or {}, sort_keys=True), calib)


def table(rows: list[dict]) -> str:
    dense = next((r for r in rows if r["config"]["criterion"] == "dense"), None)
    lines = ["| target | kinds | criterion | reconstruction | allocation | extra | calibration | achieved | params | PPL L=128 | PPL L=512 | prune s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if dense:
        lines.append(f"| 0 | - | dense | - | - | - | - | 0 | - | {dense.get('ppl_L128', float('nan')):.2f} | "
                     f"{dense.get('ppl_L512', float('nan')):.2f} | - | {dense['peak_rss_mb']:.0f} |")
    for r in rows:
        c = r["config"]
        if c["criterion"] == "dense":
            continue
        if "error" in r:
            lines.append(f"| {c['target']} | {'+'.join(c.get('kinds', []))} | {c['criterion']} | {c['reconstruction']} | {c['allocation']} | "
                         f"{_extra(c)} | {_calib(c)} | error: {r['error'][-80:]} | | | | | |")
            continue
        lines.append(f"| {c['target']} | {'+'.join(c.get('kinds', ['attention', 'ffn']))} | {c['criterion']} | "
                     f"{c['reconstruction']} | {c['allocation']} | {_extra(c)} | {_calib(c)} | {r['achieved_decoder_linear']:.3f} | "
                     f"{r['params_after'] / 1e6:.2f}M | {r.get('ppl_L128', float('nan')):.2f} | "
                     f"{r.get('ppl_L512', float('nan')):.2f} | {r['prune_seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--criteria", nargs="+", default=["magnitude", "wanda_sp", "flap", "goa", "random"])
    ap.add_argument("--recons", nargs="+", default=["none", "flap_bias", "liar", "goa"])
    ap.add_argument("--allocs", nargs="+", default=["uniform", "global"])
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-len", type=int, default=128)
    ap.add_argument("--w128", type=int, default=256)
    ap.add_argument("--w512", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["attention", "ffn"])
    ap.add_argument("--tag", default="structured")
    ap.add_argument("--extra", default="{}", help="JSON of further recipe fields (e.g. attention, lincal_layers, scope); "
                    "'stages': N prunes in N equal steps; 'engine_precision': the prune's Lightning precision "
                    "(e.g. bf16-mixed; evaluation stays fp32)")
    ap.add_argument("--render-only", action="store_true", help="only rebuild the table from the jsonl")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(json.loads(args.one))))
        return
    if not args.render_only:
        prepare_model()
    out_jsonl = RESULTS / f"{args.tag}.jsonl"
    done = set()
    if out_jsonl.exists():
        for line in out_jsonl.read_text().splitlines():
            c = json.loads(line)["config"]
            done.add(_key(c, c.get("kinds", ["attention", "ffn"]) if c["criterion"] != "dense" else ["attention", "ffn"]))
    base = {"calib_samples": args.calib_samples, "calib_len": args.calib_len, "w128": args.w128,
            "w512": args.w512, "threads": args.threads, "kinds": args.kinds, "command": " ".join([sys.executable, *sys.argv]),
            "extra": json.loads(args.extra)}
    configs = [{"criterion": "dense", "reconstruction": "-", "allocation": "-", "target": 0.0, "extra": {}}]
    configs += [{"criterion": c, "reconstruction": r, "allocation": a, "target": t}
                for t, c, r, a in itertools.product(args.targets, args.criteria, args.recons, args.allocs)]
    for cfg in ([] if args.render_only else configs):
        key = _key({**base, **cfg, "extra": base["extra"] if cfg["criterion"] != "dense" else {}},
                   args.kinds if cfg["criterion"] != "dense" else ["attention", "ffn"])
        if key in done:
            continue
        cfg = {**base, **cfg}
        if cfg["criterion"] == "dense":
            cfg["extra"] = {}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True,
                           env={**os.environ, "TQDM_DISABLE": "1"})
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        res = json.loads(line[7:]) if line else {"config": cfg, "error": (p.stderr or "no output")[-400:]}
        res["wall_seconds"] = time.perf_counter() - t0
        with out_jsonl.open("a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "config"} | {"cfg": key}), flush=True)
    rows = [json.loads(l) for l in out_jsonl.read_text().splitlines()]
    c0 = rows[0]["config"]
    commands = sorted({r["config"].get("command", "") for r in rows} - {""})
    header = ("# Structured pruning of SmolLM2-135M\n\nCommands:\n" + "".join(f"- `{c}`\n" for c in commands) + "\n"
              f"Calibration: C4 train head, {c0['calib_samples']} x {c0['calib_len']} tokens, seed 0. "
              f"Evaluation: WikiText-2 raw test, first {c0['w128']} windows at L=128 and {c0['w512']} at L=512. "
              "`achieved` = fraction of decoder linear parameters removed (exact, sympy cost model).\n\n")
    (RESULTS / f"{args.tag}.md").write_text(header + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
