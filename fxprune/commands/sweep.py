"""``fxprune sweep MODEL --recipes A,B --targets 0.1,0.2,0.3 --out DIR``: prune and evaluate every
(recipe, target) combination in one resumable run.

Each finished combination is one line of ``DIR/results.jsonl`` (written only when the combination is
complete, then flushed); a rerun with the same options skips the lines already there, so an
interrupted sweep resumes at the combination it was in. At the end (and after every combination)
``DIR/results.csv``, ``DIR/results.json`` and the plots are rewritten from the JSON lines:
``sweep_ppl.png`` (perplexity vs parameters removed, one line per recipe, dense marked; with several
``--seq-len`` values one ``ppl_L<L>`` column and one ``sweep_ppl_L<L>.png`` per further length),
``sweep_zeroshot.png`` (zero-shot average acc, when tasks are asked) and ``widths_<recipe>_<t>.png``
(kept width of every layer per group kind, for ``--widths-run RECIPE@T``, default: the first recipe at
the largest target).

Shared across combinations: the dense model (loaded once, deep-copied per combination) and the
calibration windows (drawn once per calibration setting: recipes that name the same source, samples,
length and seed share them). Calibration *statistics* are computed by each ``fxprune.prune`` call:
the public API takes windows, not statistics.

Pruning goes through the public API ``fxprune.prune(model, recipe, windows)`` only; "recipe A at
target t" is ``recipe_at`` (the one place that knows the recipe format).
"""
from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path

NAME = "sweep"
HELP = "Prune and evaluate every recipe x target combination (resumable); results table and plots."


def add_arguments(p):
    p.add_argument("model", help="smollm2, tiny:<family>, a .gguf file or a model directory")
    p.add_argument("--recipes", required=True, help="comma-separated recipe names or files")
    p.add_argument("--targets", required=True, help="comma-separated fractions, e.g. 0.1,0.2,0.3,0.4,0.5")
    p.add_argument("--out", required=True, help="output directory (results.jsonl/csv/json, plots)")
    p.add_argument("--calib", default=None, help="calibration data for every recipe (default: each recipe's)")
    p.add_argument("--calib-samples", type=int, default=None, help="override the recipes' calibration samples")
    p.add_argument("--eval-ppl", default="wikitext2", help="perplexity set ('' for none)")
    p.add_argument("--seq-len", default="128", help="perplexity window length; several, comma-separated "
                                                    "(e.g. 128,512: one perplexity column each)")
    p.add_argument("--windows", default="64", help="perplexity windows (first N); one number, or one per --seq-len")
    p.add_argument("--tasks", default="", help="zero-shot tasks ('all' = the seven)")
    p.add_argument("--limit", type=int, default=None, help="first N items of each task (recorded)")
    p.add_argument("--widths-run", default=None, help="RECIPE@TARGET whose layer widths are plotted "
                                                       "(default: the first recipe at its largest target)")
    p.add_argument("--eval-precision", default="32-true", choices=["32-true", "bf16-mixed"],
                   help="Lightning precision of the evaluation only (pruning always runs in fp32); "
                        "bf16-mixed: bf16 matmuls, several times faster on CPUs with AMX, recorded")
    p.add_argument("--save-checkpoints", action="store_true", help="also save every pruned model in OUT/ckpt/")
    p.add_argument("--data-root", default=None)


def recipe_at(spec: str, target: float, overrides: dict | None = None):
    """Recipe ``spec`` (name or file) with every structured step's removal fraction set to ``target``
    and its calibration block updated by ``overrides`` (``source``, ``samples``...)."""
    from ..recipe import load_recipe
    return load_recipe(spec).with_target(float(target)).with_calibration(**(overrides or {}))


def _float_list(s: str) -> list[float]:
    from ..errors import RecipeError
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise RecipeError(f"--targets {s!r}: {e}") from e
    if not vals or any(not 0 <= v < 1 for v in vals):
        raise RecipeError(f"--targets {s!r}: give fractions in [0, 1)")
    return vals


def _ppl_protocols(seq_len: str, windows: str) -> list[tuple[int, int]]:
    """``--seq-len 128,512 --windows 256,64`` -> [(128, 256), (512, 64)]; one ``--windows`` value applies
    to every length."""
    from ..errors import RecipeError
    try:
        lens = [int(x) for x in str(seq_len).split(",") if x.strip()]
        wins = [int(x) for x in str(windows).split(",") if x.strip()]
    except ValueError as e:
        raise RecipeError(f"--seq-len {seq_len!r} / --windows {windows!r}: {e}") from e
    if len(wins) == 1:
        wins = wins * len(lens)
    if not lens or len(wins) != len(lens) or len(set(lens)) != len(lens):
        raise RecipeError(f"--seq-len {seq_len!r} / --windows {windows!r}: give distinct lengths and one "
                          f"window count, or one per length")
    return list(zip(lens, wins))


def _key(recipe: str, target: float) -> str:
    return f"{recipe}@{target:g}"


def _load_rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line of an interrupted write: recomputed
    return rows


def _append(path: Path, row: dict) -> None:
    from ..output import OwnedDir  # the one writer: appended, fsynced, listed in the sweep's manifest
    OwnedDir(path.parent, kind="sweep").append(path.name, json.dumps(row, default=str) + "\n")


TABLE_COLUMNS = ["recipe", "target", "params_before", "params_after", "removed", "ppl", "zs_acc", "zs_acc_norm"]


def table_rows(rows: list[dict]) -> list[dict]:
    """Flat rows for the CSV / JSON table (per-task columns added after the fixed ones)."""
    out = []
    for r in rows:
        flat = {k: r.get(k) for k in TABLE_COLUMNS}
        for length, v in (r.get("ppl_by_len") or {}).items():
            flat[f"ppl_L{length}"] = v
        zs = r.get("zeroshot") or {}
        for t, v in (zs.get("tasks") or {}).items():
            flat[f"{t}_acc"], flat[f"{t}_acc_norm"] = v["acc"], v["acc_norm"]
        flat.update({"limit": zs.get("limit"), "prune_seconds": r.get("prune_seconds"),
                     "eval_seconds": r.get("eval_seconds"), "peak_rss_mb": r.get("peak_rss_mb")})
        out.append(flat)
    return out


def write_outputs(out: Path, rows: list[dict], widths_run: str | None, final: bool = True) -> dict:
    from ..evaluation.plots import plot_sweep, plot_widths
    from ..output import OwnedDir  # the one writer: each file atomic, never over a file fxprune did not write
    owned = OwnedDir(out, kind="sweep", create=True)
    flat = table_rows(rows)
    cols = list(dict.fromkeys(k for r in flat for k in r))
    with owned.file("results.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(flat)
    owned.write("results.json", json.dumps(flat, indent=1, default=str))
    dense = next((r for r in rows if r["recipe"] == "dense"), None)
    pruned = [r for r in rows if r["recipe"] != "dense"]
    plots = {}
    st = rows[0].get("settings", {}) if rows else {}
    if any(r.get("ppl") is not None for r in rows):
        lens, wins = st.get("seq_len"), st.get("windows")
        protocols = list(zip(lens, wins)) if isinstance(lens, list) else [(lens, wins)]
        flat_dense = next((f for f in flat if f["recipe"] == "dense"), {})
        flat_pruned = [f for f in flat if f["recipe"] != "dense"]  # table rows: ppl and ppl_L<L> columns
        for i, (length, n) in enumerate(protocols):  # sweep_ppl.png: the first length; sweep_ppl_L<L>.png: more
            metric, name = ("ppl", "sweep_ppl.png") if i == 0 else (f"ppl_L{length}", f"sweep_ppl_L{length}.png")
            with owned.file(name) as tmp:
                plot_sweep(flat_pruned, tmp, metric=metric, log_y=True,
                           label=f"perplexity ({st.get('ppl_set')}, L={length}, {n} windows)",
                           dense=flat_dense.get(metric))
            plots[metric] = str(out / name)
    if any(r.get("zs_acc") is not None for r in rows):
        lim = st.get("limit")
        with owned.file("sweep_zeroshot.png") as tmp:
            plot_sweep(pruned, tmp, metric="zs_acc",
                       label="zero-shot average acc" + (f" (first {lim} items)" if lim else ""),
                       dense=dense.get("zs_acc") if dense else None)
        plots["zeroshot"] = str(out / "sweep_zeroshot.png")
    if widths_run:  # the chosen run, once it is done
        chosen = next((r for r in pruned if _key(r["recipe"], r["target"]) == widths_run), None)
    else:  # default: the first recipe at its largest target, once the sweep is complete
        chosen = max(pruned, key=lambda r: (r["recipe"] == pruned[0]["recipe"], r["target"])) if final and pruned else None
    if chosen is not None:
        name = f"widths_{Path(chosen['recipe']).stem}_{chosen['target']:g}.png"
        with owned.file(name) as tmp:
            plot_widths(chosen["widths"], tmp, dense=dense.get("widths") if dense else None,
                        title=f"kept width per layer: {_key(chosen['recipe'], chosen['target'])}")
        plots["widths"] = str(out / name)
    return plots


def run(args) -> int:
    import torch

    import fxprune
    from ..calibration import Engine
    from ..data import calibration_windows, evaluation_windows, tokenizer_for
    from ..evaluation.render import peak_rss_mb
    from ..evaluation.suite import evaluate_suite, parse_tasks
    from ..evaluation.widths import count_params, widths_table
    from ..loading import load_model

    recipes = [s.strip() for s in args.recipes.split(",") if s.strip()]
    targets = _float_list(args.targets)
    tasks = parse_tasks(args.tasks)
    overrides = {}
    if args.calib:
        overrides["source"] = args.calib
    if args.calib_samples:
        overrides["samples"] = args.calib_samples
    for r in recipes:  # fail on a bad recipe name before any work
        recipe_at(r, targets[0], overrides)
    protocols = _ppl_protocols(args.seq_len, args.windows)
    out = Path(args.out)
    from ..output import OwnedDir  # new/empty, or this sweep's own directory (resume); checked before work
    OwnedDir(out, kind="sweep", create=True)
    # one length: recorded as plain numbers (sweeps written before several lengths existed stay resumable)
    lens, wins = ([p[0] for p in protocols], [p[1] for p in protocols]) if len(protocols) > 1 else protocols[0]
    settings = {"model": args.model, "ppl_set": args.eval_ppl or None, "seq_len": lens,
                "windows": wins, "tasks": tasks, "limit": args.limit, "overrides": overrides}
    if args.eval_precision != "32-true":  # recorded only when not the default (older sweeps stay resumable)
        settings["eval_precision"] = args.eval_precision
    jsonl = out / "results.jsonl"
    rows = _load_rows(jsonl)
    for r in rows:
        if r.get("settings") != settings:
            from ..errors import RecipeError
            raise RecipeError(f"{jsonl} holds results of other settings ({r.get('settings')}); "
                              f"use another --out or the same options")
    done = {_key(r["recipe"], r["target"]) for r in rows}
    loaded = load_model(args.model)
    tok = tokenizer_for(loaded)
    dense_model = loaded.model
    engine = Engine()  # pruning: fp32
    if args.eval_precision == "32-true":
        evaluator = engine
    else:
        from ..calibration.engine import EngineConfig
        evaluator = Engine(EngineConfig(precision=args.eval_precision))
    ppl_windows = [(length, evaluation_windows(tok, args.eval_ppl, length, n, root=args.data_root))
                   for length, n in protocols] if args.eval_ppl else []
    calib_cache: dict = {}
    params_before = count_params(dense_model)

    def evaluate(model) -> dict:
        t0 = time.perf_counter()
        res = {}
        by_len = {str(length): evaluator.perplexity(model, w.ids).ppl for length, w in ppl_windows}
        if by_len:
            res["ppl"] = next(iter(by_len.values()))  # the first --seq-len
            if len(by_len) > 1:
                res["ppl_by_len"] = by_len
        if tasks:
            zs = evaluate_suite(model, tok, tasks, limit=args.limit, root=args.data_root, engine=evaluator)
            res["zeroshot"] = zs
            res["zs_acc"], res["zs_acc_norm"] = zs["average"]["acc"], zs["average"]["acc_norm"]
        res["eval_seconds"] = round(time.perf_counter() - t0, 2)
        return res

    if "dense@0" not in done:
        row = {"recipe": "dense", "target": 0.0, "params_before": params_before, "params_after": params_before,
               "removed": 0.0, "prune_seconds": 0.0, "widths": widths_table(dense_model), "settings": settings}
        row.update(evaluate(dense_model))
        row["peak_rss_mb"] = round(peak_rss_mb(), 1)
        _append(jsonl, row)
        rows.append(row)
        print(f"dense: ppl {row.get('ppl')} zero-shot {row.get('zs_acc')}", flush=True)
    for name in recipes:
        for t in targets:
            if _key(name, t) in done:
                continue
            recipe = recipe_at(name, t, overrides)
            ck = recipe.calibration
            if ck not in calib_cache:
                calib_cache[ck] = calibration_windows(tok, ck, model=dense_model, root=args.data_root)
            windows = calib_cache[ck]
            model = copy.deepcopy(dense_model)
            t0 = time.perf_counter()
            with torch.no_grad():
                outcome = fxprune.prune(model, recipe, windows.ids, engine)
            prune_s = round(time.perf_counter() - t0, 2)
            after = count_params(model)
            row = {"recipe": name, "target": t, "params_before": params_before, "params_after": after,
                   "removed": 1 - after / params_before, "prune_seconds": prune_s,
                   "recipe_report": {k: v for k, v in (getattr(outcome, "report", {}) or {}).items()
                                     if k in ("achieved_decoder_linear", "params_before", "params_after")},
                   "calibration": windows.protocol() if hasattr(windows, "protocol") else {},
                   "widths": widths_table(model), "settings": settings}
            row.update(evaluate(model))
            row["peak_rss_mb"] = round(peak_rss_mb(), 1)
            if args.save_checkpoints:
                from ..checkpoint import save_pruned
                save_pruned(model, out / "ckpt" / f"{name}-{t:g}", tokenizer=loaded.tokenizer, overwrite=True,
                            extra={"model": args.model, "recipe": recipe.to_dict(), **{k: row[k] for k in
                                   ("params_before", "params_after", "prune_seconds")}})
            _append(jsonl, row)
            rows.append(row)
            del model
            print(f"{_key(name, t)}: removed {row['removed']:.3f} of all parameters, ppl {row.get('ppl')}, "
                  f"zero-shot {row.get('zs_acc')} ({prune_s}s prune, {row['eval_seconds']}s eval)", flush=True)
            write_outputs(out, rows, args.widths_run, final=False)
    plots = write_outputs(out, rows, args.widths_run)
    print(f"results: {out / 'results.csv'}, {out / 'results.json'}; plots: {', '.join(plots.values())}")
    return 0
