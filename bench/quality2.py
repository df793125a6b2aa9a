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
LENGTHS = ((128, 256), (512, 64))


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
