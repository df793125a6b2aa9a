"""``fxprune prune MODEL --recipe RECIPE --calib DATA --out DIR [--dry-run]``.

Structured recipes (``method: structured``) run the pass pipeline of ``fxprune.passes``; sparsity
recipes (``method: mrp | sparsegpt | wanda | magnitude``) run ``fxprune.sparsity``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..arguments import positive_int, seq_len
from ..evaluation import render as _report

NAME = "prune"
HELP = "Prune MODEL by RECIPE with calibration DATA and save the result to DIR."


def add_arguments(p):
    p.add_argument("model", help="smollm2, minilm, tiny:<family>, a .gguf file or a model directory")
    p.add_argument("--recipe", required=True, help="recipe file (.yaml/.json) or a name in fxprune/recipes")
    p.add_argument("--calib", default=None, help="calibration data: c4, a text/jsonl file, hf:<name> or "
                                                 "generated (default: the recipe's calib_source)")
    p.add_argument("--out", default=None, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an fxprune checkpoint at --out "
                                                            "(files fxprune did not write are kept)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--eval-ppl", default="", help="also report perplexity before/after on this set (wikitext2)")
    p.add_argument("--seq-len", type=seq_len, default=128, help="perplexity window length")
    p.add_argument("--windows", type=positive_int, default=64, help="perplexity windows")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _report.add_report_arguments(p)  # --eval-tasks, --limit (fxprune/evaluation/report.py)


def resolve_recipe(spec: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    builtin = Path(__file__).resolve().parent.parent / "recipes"
    for cand in (builtin / spec, builtin / f"{spec}.yaml", builtin / f"{spec}.json"):
        if cand.is_file():
            return cand
    from ..errors import RecipeError
    raise RecipeError(f"recipe {spec!r}: no such file and no built-in recipe of that name in {builtin}")


def _method(path: Path) -> str:
    from ..errors import RecipeError
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml
            d = yaml.safe_load(text) or {}
    except Exception as e:  # OSError, UnicodeDecodeError, JSON and YAML errors: name the file
        raise RecipeError(f"recipe file {path}: cannot parse ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise RecipeError(f"recipe file {path}: expected a mapping at the top level")
    method = d.get("method", "structured")
    if not isinstance(method, str):
        raise RecipeError(f"recipe file {path}: field 'method' must be a string, got {method!r}")
    return method


def run(args) -> int:
    path = resolve_recipe(args.recipe)
    if _method(path) != "structured":
        from .sparsify import run as run_sparsify
        if not args.out:
            from ..errors import RecipeError
            raise RecipeError("--out is required for sparsity recipes")
        args.recipe = str(path)
        for name, default in (("samples", None), ("seqlen", None), ("seed", 0), ("semi_structured", False),
                              ("overwrite", False)):
            setattr(args, name, getattr(args, name, default))
        return run_sparsify(args)
    return _run_structured(args, path)


def _ppl(model, tok, args):
    from ..calibration import Engine
    from ..data import evaluation_windows
    w = evaluation_windows(tok, args.eval_ppl, args.seq_len, args.windows, root=args.data_root)
    return Engine().perplexity(model, w.ids).ppl


def _run_structured(args, path: Path) -> int:
    from dataclasses import replace

    from ..calibration import Engine
    from ..checkpoint import save_pruned
    from ..data import CalibrationConfig, calibration_windows, tokenizer_for
    from ..loading import load_model
    from ..passes.base import PassContext, PassManager
    from ..passes.pipeline import Allocate, Analyse, Score, SelectGroups, prune_model
    from ..passes.recipe import Recipe

    recipe = Recipe.from_file(path)
    if args.calib:
        recipe = replace(recipe, calib_source=args.calib)
    if not args.dry_run and not args.out:
        from ..errors import RecipeError
        raise RecipeError("--out is required unless --dry-run")
    from ..preflight import JobSizes, check_job  # output, memory, savable: before the expensive work
    job = check_job(args.model, out=args.out, overwrite=args.overwrite, sizes=JobSizes(
        "structured", recipe.calib_samples, recipe.calib_seq_len, recipe.batch_size,
        generated=recipe.calib_source == "generated", eval_seq_len=args.seq_len if args.eval_ppl else 0))
    loaded = load_model(args.model)
    job.check_model(loaded.model)
    model, tok = loaded.model, tokenizer_for(loaded)
    cfg = CalibrationConfig(recipe.calib_source, recipe.calib_samples, recipe.calib_seq_len, recipe.seed)
    windows = calibration_windows(tok, cfg, model=model, root=args.data_root)
    report = {"model": args.model, "recipe_file": str(path), "calibration": windows.protocol()
              if hasattr(windows, "protocol") else {}}
    engine = Engine()
    if args.dry_run:
        ctx = PassManager([Analyse(), SelectGroups(recipe), Score(recipe, windows.ids, engine, force=True),
                           Allocate(recipe)]).run(PassContext(model))
        cost, plan, a = ctx["cost"], ctx["plan"], ctx["analysis"]
        split = ctx.facts.get("olica_split")
        if plan is None:  # widths only (Olica's split): units are chosen block by block when pruning
            kept = dict(ctx["kept"])
            kept.update(split.v_kept if split else {})
            plan = {g: f"{k} best" for g, k in kept.items()}
        else:
            kept = {g: len(k) for g, k in plan.items()}
        saved_qk = split.qk_removed if split else 0  # low-rank q/k: beyond the unit-count polynomial
        if split:
            for w, r in split.ranks.items():
                plan[w] = f"rank {r}"
        report["plan"] = {g: {"kind": a.group(g).kind if g in a.by_id() else "low_rank",
                              "units": a.group(g).units if g in a.by_id() else None,
                              "kept": kept.get(g, k),
                              "kept_units": k if isinstance(k, str) or len(k) <= 16 else f"{len(k)} indices"}
                          for g, k in plan.items()}
        L = recipe.calib_seq_len
        report["params"] = [cost.evaluate(cost.params, {}), cost.evaluate(cost.params, kept) - saved_qk]
        report["flops_per_token_L"] = {"L": L, "before": cost.evaluate(cost.flops_per_token, {}, L),
                                       "after": cost.evaluate(cost.flops_per_token, kept, L) - 2 * saved_qk}
        report["passes"] = [{"name": r.name, **r.report} for r in ctx.results]
        _print(report, args, dry=True)
        return 0
    if args.eval_ppl:
        report["ppl_dense"] = _ppl(model, tok, args)
    t0 = time.perf_counter()
    out = prune_model(model, recipe, windows.ids, engine)
    report.update(out.report)
    report["prune_seconds"] = round(time.perf_counter() - t0, 2)
    if args.eval_ppl:
        report["ppl_pruned"] = _ppl(model, tok, args)
    save_pruned(model, args.out, tokenizer=loaded.tokenizer, extra={**report, "plan": out.plan},
                overwrite=args.overwrite)
    report["out"] = args.out
    report["report"] = str(_report.write_prune_report(args, report, loaded))  # report.md beside the weights
    _print(report, args)
    return 0


def _print(report, args, dry=False):
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
        return
    if dry:
        for gid, p in report["plan"].items():
            print(f"{gid:48s} {p['kind']:16s} {str(p['units'] or '-'):>5s} -> {str(p['kept']):>8s}")
        b, a = report["params"]
        f = report["flops_per_token_L"]
        print(f"parameters {b:,} -> {a:,} ({100 * (1 - a / b):.1f}% fewer); FLOPs/token at L={f['L']}: "
              f"{f['before']:,} -> {f['after']:,}. Dry run: nothing was changed.")
        return
    b, a = report["params_before"], report["params_after"]
    print(f"{report['model']}: parameters {b:,} -> {a:,} ({100 * (1 - a / b):.1f}% fewer) in "
          f"{report['prune_seconds']}s; saved to {report['out']}")
    if "ppl_dense" in report:
        print(f"{args.eval_ppl} perplexity (L={args.seq_len}, {args.windows} windows): "
              f"dense {report['ppl_dense']:.2f} -> pruned {report['ppl_pruned']:.2f}")
