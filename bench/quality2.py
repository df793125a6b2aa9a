"""Benchmark (issue 13): the best 20% recipe with attention pruned too, on the full protocol, beside
dense SmolLM2 and the previous best (FFN only), with zero-shot accuracy on every row.

    OMP_NUM_THREADS=2 nohup .venv/bin/python bench/quality2.py > bench/results/quality2.log 2>&1 &

1. Prunes SmolLM2 with each ``--recipes`` recipe through the CLI (``fxprune prune smollm2 --recipe R
   --out out/bench/smollm2-R``, skipped when the checkpoint exists); wall seconds and the child's peak
   RSS go to ``bench/results/quality2.jsonl``.
2. Full protocol perplexity of each pruned checkpoint (WikiText-2 raw test, first 256 windows at
   L=128 and 64 at L=512, the windows ``bench/structured.py`` evaluates), one jsonl line per model and
   length (resumable). Dense and the previous best are carried over from
   ``structured_full.jsonl`` (same model, windows and code path), named as such in the table.
3. Zero-shot: ``bench/zeroshot_full.py --recipes PREVIOUS NEW`` (seven tasks, full sets, resumable).
4. ``--table-only``: writes ``bench/results/quality2.md`` from the jsonl files.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PREVIOUS = "goa-liar-ffn-global-20"
NEW = "olica-goa-liar-global-20"
LENGTHS = ((512, 64), (128, 256))  # the goal length first


def _lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


def ckpt_of(recipe: str) -> Path:
    return ROOT / "out" / "bench" / f"smollm2-{recipe}"


def prune(recipe: str, jsonl: Path):
    ckpt = ckpt_of(recipe)
    if (ckpt / "config.json").is_file():
        return
    cmd = [str(ROOT / ".venv" / "bin" / "fxprune"), "prune", "smollm2", "--recipe", recipe, "--out", str(ckpt),
           "--json"]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"prune failed: {p.stderr[-2000:]}")
    rec = {"kind": "prune", "recipe": recipe, "command": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}
    with jsonl.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def perplexities(recipe: str, jsonl: Path):
    done = {(r["recipe"], r["L"]) for r in _lines(jsonl) if r.get("kind") == "ppl"}
    todo = [(L, n) for L, n in LENGTHS if (recipe, L) not in done]
    if not todo:
        return
    from fxprune.calibration import Engine
    from fxprune.data import evaluation_windows, tokenizer_for
    from fxprune.loading import load_model
    loaded = load_model(str(ckpt_of(recipe)))
    tok = tokenizer_for(loaded)
    engine = Engine()
    params = sum(p.numel() for p in loaded.model.parameters())
    for L, n in todo:
        w = evaluation_windows(tok, "wikitext2", L, n)
        t0 = time.perf_counter()
        ppl = engine.perplexity(loaded.model, w.ids).ppl
        rec = {"kind": "ppl", "recipe": recipe, "L": L, "windows": int(w.ids.shape[0]), "ppl": ppl,
               "params": params, "seconds": round(time.perf_counter() - t0, 1), "source_sha256": w.sha256}
        with jsonl.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


CARRIED = {  # rows measured earlier on the same protocol (bench/results/structured_full.jsonl, quality.jsonl)
    "dense": {"kinds": "-", "achieved": 0.0, "params": 134_515_008, "ppl128": 56.35, "ppl512": 29.93,
              "source": "structured_full.jsonl"},
    PREVIOUS: {"kinds": "ffn", "achieved": 0.200, "params": 113_292_288, "ppl128": 89.34, "ppl512": 48.41,
               "prune_s": "105 (idle)", "source": "structured_full.jsonl"},
}


def _fmt(x, nd=2):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def render(recipes: list[str]) -> str:
    """The results table: full-protocol perplexity and zero-shot accuracy for every row."""
    sys.path.insert(0, str(HERE))
    import zeroshot_full as Z
    from fxprune.evaluation.tasks import load_task
    lines = _lines(RESULTS / "quality2.jsonl")
    rows = {k: dict(v) for k, v in CARRIED.items()}
    for r in recipes:
        row = rows.setdefault(r, {"kinds": "attention+ffn", "source": "quality2.jsonl"})
        for l in lines:
            if l.get("recipe") != r:
                continue
            if l["kind"] == "prune":
                row["prune_s"], row["rss"] = f"{l['seconds']:.0f} (loaded)", l["peak_rss_mb"]
            elif l["kind"] == "ppl":
                row[f"ppl{l['L']}"], row["params"] = l["ppl"], l["params"]
        rep = ckpt_of(r) / "fxprune_report.json"
        if rep.is_file():
            from fxprune.report import find_pass
            rj = json.loads(rep.read_text())
            try:
                row["achieved"] = find_pass(rj, "olica_split")["achieved"]
            except KeyError:
                row["achieved"] = find_pass(rj, "allocate")["achieved"]
    done = Z._done(RESULTS / "zeroshot_full.jsonl")
    totals = {t: len(load_task(t)[0]) for t in Z.ORDER}
    models = list(rows)
    zs = {}
    for m in models:
        for t in Z.ORDER:
            rs = [v for (mm, tt, _), v in done.items() if mm == m and tt == t]
            n = sum(v["items"] for v in rs)
            zs[m, t] = (sum(v["acc_count"] for v in rs) / max(n, 1), sum(v["acc_norm_count"] for v in rs) / max(n, 1), n)
    complete = [t for t in Z.ORDER if all(zs[m, t][2] == totals[t] for m in models)]
    dense512 = rows["dense"]["ppl512"]
    head = ["| row | pruned kinds | achieved (decoder linear) | params | PPL L=128 (256 w) | PPL L=512 (64 w) | x dense (512) | prune s | source |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        r = rows[m]
        p512 = r.get("ppl512")
        head.append(f"| {m} | {r['kinds']} | {_fmt(r.get('achieved'), 3)} | "
                    f"{_fmt(r['params'] / 1e6 if r.get('params') else None)}M | {_fmt(r.get('ppl128'))} | {_fmt(p512)} | "
                    f"{_fmt(p512 / dense512 if p512 else None)} | {r.get('prune_s', '-')} | {r['source']} |")
    zt = ["| row | " + " | ".join(f"{t} acc / acc_norm" for t in Z.ORDER) + f" | average of {len(complete)} complete ({', '.join(complete) or '-'}) acc / acc_norm |",
          "|---|" + "---|" * (len(Z.ORDER) + 1)]
    for m in models:
        cells = []
        for t in Z.ORDER:
            a, an, n = zs[m, t]
            cells.append("-" if n == 0 else f"{a:.4f} / {an:.4f}" + ("" if n == totals[t] else f" (partial {n}/{totals[t]})"))
        if complete:
            avg = (sum(zs[m, t][0] for t in complete) / len(complete), sum(zs[m, t][1] for t in complete) / len(complete))
            cells.append(f"{avg[0]:.4f} / {avg[1]:.4f}")
        else:
            cells.append("-")
        zt.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(head) + "\n\n" + "\n".join(zt) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", default=[NEW])
    ap.add_argument("--tasks", nargs="*", default=None, help="zero-shot tasks (default: all seven)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-zeroshot", action="store_true")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    jsonl = RESULTS / "quality2.jsonl"
    if args.table_only:
        print(render(args.recipes))
        return 0
    if not args.table_only:
        for r in args.recipes:
            prune(r, jsonl)
            perplexities(r, jsonl)
        if not args.no_zeroshot:
            sys.path.insert(0, str(HERE))
            import zeroshot_full
            zeroshot_full.main(["--recipes", PREVIOUS, *args.recipes]
                               + (["--tasks", *args.tasks] if args.tasks else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
