"""``fxprune prune MODEL --recipe RECIPE [--calib DATA] --out DIR [--dry-run]``: run any recipe
(structured, sparsity, or steps composed) on MODEL and save the result; ``--dry-run`` runs only the
recipe's planning passes and prints what would be removed.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..arguments import ACCELERATORS, PRECISIONS, positive_int, seq_len
from ..evaluation import render as _report

NAME = "prune"
HELP = "Prune MODEL by RECIPE (structured, sparsity or both) with calibration DATA and save to DIR."


def add_arguments(p):
    p.add_argument("model", help="smollm2, minilm, tiny:<family>, a .gguf file or a model directory")
    p.add_argument("--recipe", required=True, help="recipe file (.yaml/.json) or a shipped name in fxprune/recipes")
    p.add_argument("--calib", default=None, help="calibration data: c4, a text/jsonl file, hf:<name> or "
                                                 "generated (default: the recipe's calibration.source)")
    p.add_argument("--calib-samples", "--samples", dest="calib_samples", type=positive_int, default=None,
                   help="calibration windows (default: the recipe's)")
    p.add_argument("--calib-seq-len", "--seqlen", dest="calib_seq_len", type=seq_len, default=None,
                   help="tokens per calibration window (default: the recipe's)")
    p.add_argument("--seed", type=int, default=None, help="calibration sampling seed (default: the recipe's)")
    p.add_argument("--out", default=None, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an fxprune checkpoint at --out "
                                                            "(files fxprune did not write are kept)")
    p.add_argument("--dry-run", action="store_true", help="run the planning passes only: print the plan, change nothing")
    p.add_argument("--resume", action="store_true", help="record progress after every block in "
                   "<out>.fxprune-progress and, if a killed run of the same job left one, continue from it "
                   "(bit-identical to an uninterrupted run; fxprune/progress.py)")
    p.add_argument("--onload", action="store_true", help="MODEL is a safetensors directory bigger than memory: "
                   "keep it on disk, read and prune one block at a time, stream the pruned blocks to --out "
                   "(fxprune/onload.py)")
    p.add_argument("--accelerator", default="cpu", choices=ACCELERATORS,
                   help="Lightning accelerator the prune runs on (cpu, gpu, auto); the checkpoint is saved from the CPU")
    p.add_argument("--precision", default="32-true", choices=PRECISIONS,
                   help="Lightning precision of the prune's forwards (default 32-true; bf16 changes the result: "
                        "liar_block's refit measured 8.7%% worse at L=512 on SmolLM2 with bf16-mixed)")
    p.add_argument("--eval-ppl", default="", help="also report perplexity before/after on this set (wikitext2)")
    p.add_argument("--seq-len", type=seq_len, default=128, help="perplexity window length")
    p.add_argument("--windows", type=positive_int, default=64, help="perplexity windows")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--semi-structured", action="store_true",
                   help="CUDA only: convert 2:4 layers to semi-structured sparse tensors and time them")
    p.add_argument("--deploy-dtype", default=None, help="GGUF type the result will be deployed as (q8_0, q4_0, "
                   "q4_k_m...): FFN widths are rounded to the row multiple it needs (fxprune.export.types)")
    _report.add_report_arguments(p)  # --eval-tasks, --limit (fxprune/evaluation/render.py)


def recipe_from_args(args):
    """The recipe named by ``--recipe`` with the calibration overrides of the command line."""
    from ..recipe import load_recipe
    over = {k: v for k, v in (("source", args.calib), ("samples", args.calib_samples),
                              ("seq_len", args.calib_seq_len), ("seed", args.seed)) if v is not None}
    return load_recipe(args.recipe).with_calibration(**over)


def _ppl(model, tok, args):
    from ..calibration.engine import Engine, EngineConfig
    from ..data import evaluation_windows
    w = evaluation_windows(tok, args.eval_ppl, args.seq_len, args.windows, root=args.data_root)
    return Engine(EngineConfig(accelerator=getattr(args, "accelerator", "cpu"))).perplexity(model, w.ids).ppl  # fp32


def _engine(args):
    """The Lightning engine of ``--accelerator`` / ``--precision`` (``ArgumentError`` where this machine
    cannot run it)."""
    from ..calibration.engine import Engine, EngineConfig
    from ..errors import ArgumentError
    try:
        return Engine(EngineConfig(accelerator=args.accelerator, precision=args.precision))
    except Exception as e:  # Lightning refuses a setting this machine cannot run (no GPU)
        raise ArgumentError(f"--accelerator {args.accelerator} --precision {args.precision}: "
                            f"{type(e).__name__}: {e}") from e


def run(args) -> int:
    from ..data import calibration_windows, tokenizer_for
    from ..errors import RecipeError
    from ..loading import load_model
    from ..pipeline import plan_model, prune_model
    from ..recipe import resolve_recipe_path

    from ..preflight import JobSizes, check_job

    recipe = recipe_from_args(args)
    deploy = None
    if getattr(args, "deploy_dtype", None):  # export's hook (issue 10): widths that suit a GGUF type
        from ..export.types import for_deployment
        recipe, multiple = for_deployment(recipe, args.deploy_dtype)
        deploy = {"dtype": args.deploy_dtype, "channel_multiple": multiple}
    if not args.dry_run and not args.out:
        raise RecipeError("--out is required unless --dry-run")
    if args.resume and (args.dry_run or args.onload):
        raise RecipeError("--resume records a pruning run in memory; not with --dry-run or --onload")
    on_device = args.accelerator != "cpu" or args.precision != "32-true"
    if on_device and (args.onload or args.resume):
        from ..errors import ArgumentError
        raise ArgumentError("--accelerator / --precision other than cpu / 32-true: not with --onload or --resume "
                            "(both keep the model on the CPU)")
    engine = _engine(args)
    if args.onload:
        return run_onloaded(args, recipe)
    cal = recipe.calibration
    structured = any(s.kind == "structured" for s in recipe.steps)
    job = check_job(args.model, out=None if args.dry_run else args.out, overwrite=args.overwrite,
                    samples_field="--calib-samples", sizes=JobSizes(
                        "structured" if structured else "sparsity", cal.samples if recipe.needs_calibration else 0,
                        cal.seq_len, cal.batch_size, generated=cal.source == "generated",
                        eval_seq_len=args.seq_len if args.eval_ppl else 0))  # output, memory, savable: before the work
    loaded = load_model(args.model)
    job.check_model(loaded.model)
    model, tok = engine.prepare(loaded.model), tokenizer_for(loaded)
    windows = (calibration_windows(tok, recipe.calibration, model=model, root=args.data_root)
               if recipe.needs_calibration else None)
    report = {"model": args.model, "recipe_name": recipe.name, "recipe_file": str(resolve_recipe_path(args.recipe))}
    if deploy:
        report["deploy"] = deploy
    if args.dry_run:
        ctxs = plan_model(model, recipe, windows, engine)
        report["steps"] = [describe_plan(step, ctx, recipe.calibration.seq_len)
                           for step, ctx in zip(recipe.steps, ctxs)]
        _print(report, args, dry=True)
        return 0
    if args.eval_ppl:
        report["ppl_dense"] = _ppl(model, tok, args)
    progress = None
    if args.resume:
        from ..progress import Progress, job_key, progress_dir
        progress = Progress.open(progress_dir(args.out), job_key(recipe, model, None if windows is None
                                                                  else windows.ids)).attach(model)
    t0 = time.perf_counter()
    artifacts = _artifacts_dir(recipe)  # files of export steps, moved into --out with the checkpoint
    try:
        out = prune_model(model, recipe, windows, engine, tokenizer=loaded.tokenizer, artifacts=artifacts,
                          source=args.model)
        if progress is not None:
            progress.detach(model)
            report["resumed_blocks"] = progress.resumed_blocks
        _finish(args, report, out, model, tok, loaded, windows, t0, artifacts)
        if progress is not None:
            progress.finish()  # the checkpoint is published: its progress record goes
    finally:
        if artifacts is not None:
            shutil.rmtree(artifacts, ignore_errors=True)
    _print(report, args)
    return 0


def _artifacts_dir(recipe):
    """A private temporary directory when a step writes files (export), else None."""
    if not any(s.kind == "export" for s in recipe.steps):
        return None
    return Path(tempfile.mkdtemp(prefix="fxprune-artifacts-"))


def _finish(args, report, out, model, tok, loaded, windows, t0, artifacts) -> None:
    from ..checkpoint import save_pruned
    report.update(out.report)
    report["prune_seconds"] = round(time.perf_counter() - t0, 2)
    if args.eval_ppl:
        report["ppl_pruned"] = _ppl(model, tok, args)
    if args.semi_structured:
        import torch

        from ..sparsity import convert_2to4_and_time
        ids = windows.ids[:1] if windows is not None else torch.randint(0, model.config.vocab_size, (1, 128))
        report["semi_structured"] = {k: v for k, v in convert_2to4_and_time(model, ids).items() if k != "converted"}
    files = {p.name: p for p in sorted(artifacts.iterdir())} if artifacts is not None else None
    model.to("cpu")  # --accelerator: the checkpoint and its report are written from the CPU
    save_pruned(model, args.out, tokenizer=loaded.tokenizer, extra={**report, "plan": out.plan},
                overwrite=args.overwrite, files=files)
    report["out"] = args.out
    report["report"] = str(_report.write_prune_report(args, report, loaded))  # report.md beside the weights


def run_onloaded(args, recipe) -> int:
    """``--onload``: the model stays on disk (a meta-device skeleton, ``fxprune.onload``); no preflight
    of the whole model's memory (one block is resident), the output is checked before any work."""
    from pathlib import Path

    from ..data import ByteTokenizer, calibration_windows
    from ..errors import RecipeError
    from ..onload import check_onloadable, open_onloaded
    from ..pipeline import prune_model
    if args.eval_ppl or args.semi_structured or getattr(args, "eval_tasks", None):
        raise RecipeError("--onload runs the prune and saves it; --eval-ppl, --eval-tasks and "
                          "--semi-structured need the whole model in memory")
    if args.dry_run:
        return _onload_dry_run(args, recipe)
    if recipe.calibration.source == "generated" and recipe.needs_calibration:
        raise RecipeError("--onload: generated calibration samples from the whole model; give --calib DATA")
    for step in recipe.steps:
        check_onloadable(step)
    om = open_onloaded(args.model, out=args.out, overwrite=args.overwrite)
    with om:
        tok = None
        if (Path(args.model) / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(args.model)
        cfg = om.model.config
        windows = (calibration_windows(tok or ByteTokenizer(cfg.vocab_size, getattr(cfg, "bos_token_id", None)),
                                       recipe.calibration, root=args.data_root) if recipe.needs_calibration else None)
        t0 = time.perf_counter()
        out = prune_model(om.model, recipe, windows)
        report = {"model": args.model, "recipe_name": recipe.name, "onloaded": True, **out.report,
                  "prune_seconds": round(time.perf_counter() - t0, 2),
                  "peak_resident_weight_bytes": om.peak_resident_bytes}
        om.save(tokenizer=tok, extra={**report, "plan": out.plan})
    report["out"] = args.out
    _print(report, args)
    return 0


def _onload_dry_run(args, recipe) -> int:
    """``--onload --dry-run``: the expected peak memory and time per block (``fxprune.onload_plan``),
    from the checkpoint's headers; nothing is read, planned or run."""
    from ..errors import ModelLoadError
    from ..onload_plan import describe, estimate_onloaded
    from ..preflight import model_facts
    from ..shards import TensorFiles
    from ..steps.sparsity import SparsityStep
    from ..steps.structured import StructuredStep

    facts = model_facts(args.model)
    if facts is None or facts.fmt != "safetensors":
        raise ModelLoadError(args.model, "--onload --dry-run needs a safetensors checkpoint directory")
    stored = {t.dtype for t in TensorFiles.open(args.model).tensors.values()}
    elem = max(dt.itemsize for dt in stored) if stored else 2
    cal = recipe.calibration
    ests = []
    for step in recipe.steps:
        kind = "sparsity" if isinstance(step, SparsityStep) else "structured" if isinstance(step, StructuredStep) else None
        if kind is None:
            continue
        e = estimate_onloaded(facts, kind, cal.samples, cal.seq_len, cal.batch_size, elem,
                              kept=1 - getattr(step, "target", 0.2))
        ests.append({"kind": step.kind, **e.as_dict(), "text": describe(e)})
    report = {"model": args.model, "recipe_name": recipe.name, "onloaded": True, "dry_run": True,
              "calibration": f"{cal.source} {cal.samples} x {cal.seq_len}", "steps": ests}
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
    else:
        for i, e in enumerate(ests):
            print(f"step {i + 1}: {e['kind']} (onloaded, {report['calibration']})\n" + e["text"])
    return 0


def describe_plan(step, ctx, seq_len: int) -> dict:
    """What a step's planning passes decided, for printing: structured (group -> kept units,
    parameters and FLOPs before -> after) or sparsity (layers and their patterns)."""
    facts = ctx.facts
    out = {"kind": step.kind, "passes": [{"name": r.name, **r.report} for r in ctx.results]}
    if step.kind == "export":
        out["export"] = {"file": step.filename, "dtype": step.dtype, "format": step.format}
        return out
    if "linears" in facts:
        out["layers"] = {n: (p if isinstance(p, str) else p.label) for n, (_, p) in facts["linears"].items()}
        return out
    a, cost, alloc = facts["analysis"], facts["cost"], facts["allocation"]
    kept = dict(alloc.kept)
    plan = {g: (f"{k} best" if alloc.plan is None else alloc.plan[g]) for g, k in kept.items()}
    saved_qk = getattr(alloc, "qk_removed", 0)  # Olica's low-rank q/k: beyond the unit-count polynomial
    kept.update(getattr(alloc, "v_kept", {}))
    plan.update({g: f"{k} best" for g, k in getattr(alloc, "v_kept", {}).items()})
    by_id = a.by_id()
    out["plan"] = {g: {"kind": by_id[g].kind, "units": by_id[g].units, "kept": kept[g],
                       "kept_units": k if isinstance(k, str) or len(k) <= 16 else f"{len(k)} indices"}
                   for g, k in plan.items()}
    out["plan"].update({w: {"kind": "low_rank", "units": None, "kept": f"rank {r}", "kept_units": f"rank {r}"}
                        for w, r in getattr(alloc, "ranks", {}).items()})
    out["params"] = [cost.evaluate(cost.params, {}), cost.evaluate(cost.params, kept) - saved_qk]
    out["flops_per_token_L"] = {"L": seq_len, "before": cost.evaluate(cost.flops_per_token, {}, seq_len),
                                "after": cost.evaluate(cost.flops_per_token, kept, seq_len) - 2 * saved_qk}
    return out


def _print(report, args, dry=False):
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
        return
    if dry:
        for i, st in enumerate(report["steps"]):
            print(f"step {i + 1}: {st['kind']}")
            if "export" in st:
                e = st["export"]
                print(f"  writes {e['file']} ({e['format']} {e['dtype']}) into --out")
                continue
            if "layers" in st:
                for name, pat in st["layers"].items():
                    print(f"  {name:48s} {pat}")
                continue
            for gid, p in st["plan"].items():
                print(f"  {gid:48s} {p['kind']:16s} {str(p['units'] or '-'):>5s} -> {str(p['kept']):>8s}")
            b, a = st["params"]
            f = st["flops_per_token_L"]
            print(f"  parameters {b:,} -> {a:,} ({100 * (1 - a / b):.1f}% fewer); FLOPs/token at L={f['L']}: "
                  f"{f['before']:,} -> {f['after']:,}")
        if report.get("deploy", {}).get("channel_multiple"):
            d = report["deploy"]
            print(f"FFN widths rounded to multiples of {d['channel_multiple']} for GGUF {d['dtype']} "
                  f"(row length of ffn_down).")
        print("Dry run: nothing was changed." + (" Steps after the first are planned on the input model."
                                                 if len(report["steps"]) > 1 else ""))
        return
    b, a = report["params_before"], report["params_after"]
    print(f"{report['model']}: parameters {b:,} -> {a:,} ({100 * (1 - a / b):.1f}% fewer) in "
          f"{report['prune_seconds']}s; saved to {report['out']}")
    for st in report["steps"]:
        for p in st["passes"]:
            if "sparsity_selected_linears" in p:
                print(f"{st['kind']}: {p['sparsity_selected_linears']:.2%} zeros in the selected linears"
                      + (f" (skipped: {', '.join(p['skipped'])})" if p["skipped"] else ""))
    if "ppl_dense" in report:
        print(f"{args.eval_ppl} perplexity (L={args.seq_len}, {args.windows} windows): "
              f"dense {report['ppl_dense']:.2f} -> pruned {report['ppl_pruned']:.2f}")
