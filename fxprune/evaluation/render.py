"""A human-readable report per checkpoint: ``report.md`` + ``report_widths.png`` + ``report.json``.

Written beside the weights by ``fxprune prune`` (``write_prune_report``, one call at the end of the
command) and again by ``fxprune report DIR`` (``render_dir``) for any existing checkpoint. Contents:
the recipe (file, sha256, text), the calibration data and its checksum, parameters and bytes on disk
before -> after, the kept width of every layer per group kind (read from the model itself: module
names and parameter shapes; the dense widths from the source model's config), time and peak memory
per stage, and perplexity / zero-shot scores when they were asked for.

``report.json`` holds what only the run knew (dense widths, stages, scores); ``render_dir`` merges it
with ``fxprune_report.json`` (written by ``save_pruned``) and what the checkpoint itself shows
(parameter count, widths, file sizes), so a checkpoint without ``report.json`` still gets a report.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import resource
from pathlib import Path
from typing import Any


REPORT_MD = "report.md"
REPORT_JSON = "report.json"
WIDTHS_PNG = "report_widths.png"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def disk_bytes(directory) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


def recipe_entry(recipe_file: str | None) -> dict:
    if not recipe_file:
        return {}
    p = Path(recipe_file)
    text = p.read_text() if p.is_file() else None
    return {"file": str(p), "sha256": _sha256(p), "text": text}


def dense_widths_for(spec: str | None, model: Any = None) -> tuple[list[dict], str]:
    """Dense widths of the source model ``spec`` from its config (no weights) and where they came from."""
    from .widths import count_params, dense_model_like, source_config, widths_table
    cfg = source_config(spec) if spec else None
    dense = dense_model_like(cfg) if cfg is not None else None
    if dense is not None:
        return widths_table(dense), f"config of {spec}"
    if model is not None and "fxprune_structure" in getattr(model, "config", {}).__dict__:
        dense = dense_model_like(model.config)  # per-layer structure: the stock config keeps dense widths
        if dense is not None:
            return widths_table(dense), "checkpoint config (unpatched; per-layer structure recorded)"
    return [], "unknown"


def add_report_arguments(p) -> None:
    """``fxprune prune``'s report options (one call in its ``add_arguments``)."""
    p.add_argument("--eval-tasks", default="", help="also score the pruned model on these zero-shot tasks "
                   "('all' = ARC-e, ARC-c, PIQA, HellaSwag, WinoGrande, BoolQ, OBQA) for the report")
    p.add_argument("--limit", type=int, default=None, help="first N items of each task (quick runs; recorded)")


def write_prune_report(args: Any, report: dict, loaded: Any) -> Path | None:
    """The hook of ``fxprune prune``: evaluate the pruned model (``loaded.model``) on ``--eval-tasks`` if
    asked, then write the report beside the checkpoint in ``args.out``. Returns the Markdown path."""
    from .widths import count_params, dense_model_like, source_config, widths_table
    if not getattr(args, "out", None) or getattr(args, "dry_run", False):
        return None
    model = loaded.model
    out = Path(args.out)
    data = {"model": report.get("model"), "checkpoint": str(out), "recipe": recipe_entry(report.get("recipe_file")),
            "calibration": report.get("calibration", {})}
    data["stages"] = _stages_of(report)
    data["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if "ppl_dense" in report:
        data["ppl"] = {"set": getattr(args, "eval_ppl", None), "seq_len": getattr(args, "seq_len", None),
                       "windows": getattr(args, "windows", None), "dense": report["ppl_dense"],
                       "pruned": report.get("ppl_pruned")}
    tasks = getattr(args, "eval_tasks", "") or ""
    if tasks:
        import time

        from ..data import tokenizer_for
        from .suite import evaluate_suite, parse_tasks
        t0 = time.perf_counter()
        tok = tokenizer_for(loaded)
        data["zeroshot"] = {"pruned": evaluate_suite(model, tok, parse_tasks(tasks), limit=getattr(args, "limit", None),
                                                     root=getattr(args, "data_root", None))}
        data["stages"].append({"name": "zero-shot evaluation", "seconds": round(time.perf_counter() - t0, 2),
                               "peak_rss_mb": round(peak_rss_mb(), 1)})
    data["widths"] = {"kept": widths_table(model)}
    data["widths"]["dense"], data["widths"]["dense_source"] = dense_widths_for(report.get("model"), model)
    from ..output import OwnedDir  # the one writer: atomic, listed in the checkpoint's manifest
    OwnedDir(out).write(REPORT_JSON, json.dumps(data, indent=1, default=str))
    return render_dir(out, model=model)


def _stages_of(report: dict) -> list[dict]:
    """Stages with seconds from a prune report: the total, then each pass it lists."""
    stages = []
    if report.get("prune_seconds") is not None:
        stages.append({"name": "prune (total)", "seconds": report["prune_seconds"], "peak_rss_mb": None})
    for p in report.get("passes", []) or []:
        if isinstance(p, dict) and "seconds" in p:
            stages.append({"name": f"pass {p.get('name')}", "seconds": p["seconds"], "peak_rss_mb": None})
    return stages


def render_dir(directory, model: Any = None) -> Path:
    """(Re)write ``report.md`` and ``report_widths.png`` of checkpoint ``directory``."""
    from .widths import count_params, dense_model_like, source_config, widths_table
    from .plots import plot_widths
    d = Path(directory)
    saved = json.loads((d / "fxprune_report.json").read_text()) if (d / "fxprune_report.json").is_file() else {}
    data = json.loads((d / REPORT_JSON).read_text()) if (d / REPORT_JSON).is_file() else {}
    if model is None:
        from ..loading import load_model
        model = load_model(str(d)).model
    kept = widths_table(model)
    dense = (data.get("widths") or {}).get("dense")
    dense_source = (data.get("widths") or {}).get("dense_source")
    if not dense:
        dense, dense_source = dense_widths_for(saved.get("model"), model)
    params_after = count_params(model)
    params_before = saved.get("params_before")
    recipe = data.get("recipe") or recipe_entry(saved.get("recipe_file"))
    calib = data.get("calibration") or saved.get("calibration") or {}
    from ..output import OwnedDir  # the one writer: atomic, never over a file fxprune did not write
    owned = OwnedDir(d)
    with owned.file(WIDTHS_PNG) as tmp:
        plot_widths(kept, tmp, dense=dense, title=f"kept width per layer: {d.name}")
    md = [f"# fxprune report: {d.name}", "",
          f"- model: `{saved.get('model') or data.get('model')}`",
          f"- checkpoint: `{d}` ({disk_bytes(d):,} bytes of safetensors)",
          f"- rendered: {_dt.datetime.now().isoformat(timespec='seconds')}", ""]
    md += ["## Recipe", ""]
    if recipe:
        md += [f"`{recipe.get('file')}` (sha256 `{recipe.get('sha256')}`)", ""]
        if recipe.get("text"):
            md += ["```yaml", recipe["text"].rstrip(), "```", ""]
    else:
        md += ["(not recorded)", ""]
    md += ["## Calibration data", ""]
    if calib:
        md += [f"- {k}: `{v}`" for k, v in calib.items()] + [""]
    else:
        md += ["(not recorded)", ""]
    md += ["## Size", "", "| | parameters |", "|---|---|"]
    if params_before:
        md.append(f"| dense | {params_before:,} |")
    md.append(f"| pruned | {params_after:,} |")
    if params_before:
        md.append(f"| removed | {params_before - params_after:,} ({100 * (1 - params_after / params_before):.2f}% of all) |")
    md.append("")
    md += ["## Kept width per layer", "", f"![widths]({WIDTHS_PNG})", "",
           f"Dense widths: {dense_source or 'unknown'}. Widths are channels (q/kv: heads x head width).", ""]
    ref = {(r["layer"], r["kind"]): r["width"] for r in dense or []}
    kinds = list(dict.fromkeys(r["kind"] for r in kept))
    layers = sorted({r["layer"] for r in kept})
    table = {(r["layer"], r["kind"]): r["width"] for r in kept}
    md.append("| layer | " + " | ".join(kinds) + " |")
    md.append("|---|" + "---|" * len(kinds))
    for layer in layers:
        cells = []
        for k in kinds:
            w, dw = table.get((layer, k)), ref.get((layer, k))
            cells.append("-" if w is None else (f"{w} / {dw}" if dw is not None and dw != w else f"{w}"))
        md.append(f"| {layer} | " + " | ".join(cells) + " |")
    md += ["", "(`kept / dense` where they differ)", ""]
    stages = data.get("stages") or _stages_of(saved)
    md += ["## Time and memory per stage", ""]
    if stages:
        md += ["| stage | seconds | peak RSS MiB (process, so far) |", "|---|---|---|"]
        md += [f"| {s['name']} | {s['seconds']} | {s.get('peak_rss_mb') or '-'} |" for s in stages]
        md += ["", f"Peak RSS of the whole run: {data.get('peak_rss_mb', '-')} MiB.", ""]
    elif saved.get("prune_seconds") is not None:
        md += [f"prune: {saved['prune_seconds']} s (stages not recorded)", ""]
    else:
        md += ["(not recorded)", ""]
    ppl = data.get("ppl") or ({"dense": saved.get("ppl_dense"), "pruned": saved.get("ppl_pruned")}
                              if saved.get("ppl_dense") is not None else None)
    md += ["## Perplexity", ""]
    if ppl:
        md += [f"{ppl.get('set') or ''} (L={ppl.get('seq_len', '?')}, {ppl.get('windows', '?')} windows): "
               f"dense {ppl['dense']:.2f} -> pruned {ppl['pruned']:.2f}", ""]
    else:
        md += ["(not asked: `--eval-ppl wikitext2`)", ""]
    md += ["## Zero-shot", ""]
    zs = data.get("zeroshot")
    if zs:
        md += zeroshot_table(zs)
    else:
        md += ["(not asked: `--eval-tasks all`)", ""]
    return owned.write(REPORT_MD, "\n".join(md) + "\n")


def zeroshot_table(results: dict) -> list[str]:
    """Markdown rows: one column pair (acc, acc_norm) per model in ``results`` {label: evaluate_suite dict}."""
    labels = list(results)
    names = list(dict.fromkeys(t for r in results.values() for t in r["tasks"]))
    md = ["| task | " + " | ".join(f"{lab} acc | {lab} acc_norm" for lab in labels) + " | items | seconds |",
          "|---|" + "---|---|" * len(labels) + "---|---|"]
    for t in names:
        cells = []
        for lab in labels:
            r = results[lab]["tasks"].get(t)
            cells += [f"{r['acc']:.4f}", f"{r['acc_norm']:.4f}"] if r else ["-", "-"]
        first = next(r["tasks"][t] for r in results.values() if t in r["tasks"])
        secs = "/".join(str(results[lab]["tasks"][t]["seconds"]) for lab in labels if t in results[lab]["tasks"])
        md.append(f"| {t} | " + " | ".join(cells) + f" | {first['items']} | {secs} |")
    cells = []
    for lab in labels:
        a = results[lab].get("average")
        cells += [f"{a['acc']:.4f}", f"{a['acc_norm']:.4f}"] if a else ["-", "-"]
    md.append("| **average** | " + " | ".join(cells) + " | | |")
    lim = {results[lab].get("limit") for lab in labels}
    md += ["", "Full sets." if lim == {None} else f"Reduced: first {sorted(x for x in lim if x)} items of each task "
           "(`--limit`).", f"Scorer: {results[labels[0]].get('scorer')}.", ""]
    return md
