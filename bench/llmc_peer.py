"""Peer reference: llm-compressor's SparseGPTModifier / WandaPruningModifier on the same model and the
same calibration windows, run in its own venv (/work/venv-llmc). Three steps:

    # 1. main venv: dense SmolLM2 as an HF dir + our calibration windows
    PYTHONPATH=$PWD /work/main/.venv/bin/python bench/llmc_peer.py export --out /tmp/llmc_in --samples 16 --seqlen 512
    # 2. llmc venv: prune
    /work/venv-llmc/bin/python bench/llmc_peer.py prune --inp /tmp/llmc_in --method sparsegpt --pattern 2:4 --out /tmp/llmc_sgpt24
    # 3. main venv: evaluate and append to bench/results/<tag>.json
    PYTHONPATH=$PWD /work/main/.venv/bin/python bench/llmc_peer.py eval --model /tmp/llmc_sgpt24 --method llmc-sparsegpt --pattern 2:4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def export(args):
    from sparsity_data import calibration_windows
    from fxprune.data import resolve
    from fxprune.loading import load_model
    lm = load_model("smollm2")
    out = Path(args.out)
    from fxprune.sparsity import save_sparse_model
    save_sparse_model(lm.model, out, lm.tokenizer)  # handles the GGUF marker (tensors are dequantized floats)
    calib = calibration_windows(resolve("c4"), lm.tokenizer, args.samples, args.seqlen, seed=args.seed)
    torch.save(torch.cat(calib), out / "calib_ids.pt")


def prune(args):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    inp = Path(args.inp)
    model = AutoModelForCausalLM.from_pretrained(inp, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(inp)
    ids = torch.load(inp / "calib_ids.pt")
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    kw = dict(sparsity=0.5 if ":" in args.pattern else float(args.pattern), targets=["Linear"], ignore=["re:.*lm_head"])
    if ":" in args.pattern:
        kw["mask_structure"] = args.pattern
    mod = SparseGPTModifier(**kw) if args.method == "sparsegpt" else WandaPruningModifier(**kw)
    import resource
    t, c = time.time(), time.process_time()
    oneshot(model=model, tokenizer=tok, dataset=ds, recipe=[mod], num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1])
    secs, cpu = time.time() - t, time.process_time() - c
    model.save_pretrained(args.out)
    (Path(args.out) / "llmc_seconds.txt").write_text(f"{secs}\n")
    import llmcompressor
    import transformers
    (Path(args.out) / "llmc_run.json").write_text(json.dumps({
        "wall_s": secs, "cpu_s": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "llmcompressor": llmcompressor.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "modifier": repr(mod), "samples": len(ids), "seqlen": ids.shape[1],
        "threads": args.threads}, indent=1))
    print(f"llmc {args.method} {args.pattern}: {secs:.0f}s wall, {cpu:.0f}s CPU")


def evaluate(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from fxprune.data import evaluation_windows
    from fxprune.evaluation.perplexity import perplexity
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained("/tmp/llmc_in")
    ppl = perplexity(model, evaluation_windows(tok, "wikitext2", args.eval_L, args.eval_windows).ids, batch_size=4,
                     progress=False).ppl
    lin = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    sp = sum(int((w == 0).sum()) for w in lin) / sum(w.numel() for w in lin)
    secs = float((Path(args.model) / "llmc_seconds.txt").read_text())
    path = Path(__file__).parent / "results" / "llmc_peer.json"  # merged into <tag>.md by bench/sparsity.py --render-only
    d = json.loads(path.read_text()) if path.exists() else {"results": []}
    label = args.pattern if ":" in args.pattern else f"{float(args.pattern):.0%}"
    d["results"] = [r for r in d["results"] if not (r["method"] == args.method and r["pattern"] == label)]
    d["results"].append({"method": args.method, "pattern": label, "ppl": ppl, "seconds": secs, "sparsity": sp,
                         "config": "llmcompressor 0.14.0.1 defaults (block_size 128, dampening_frac 0.01), "
                                   "targets Linear, ignore lm_head; same 16x512 C4 windows; 1 thread",
                         "eval": f"WikiText-2 raw test, L={args.eval_L}, first {args.eval_windows} windows"})
    path.write_text(json.dumps(d, indent=1))
    print(json.dumps(d["results"][-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["export", "prune", "eval"])
    ap.add_argument("--out")
    ap.add_argument("--inp")
    ap.add_argument("--model")
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--pattern", default="2:4")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-L", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="sparsity")
    ap.add_argument("--seed", type=int, default=0, help="calibration window seed (export)")
    args = ap.parse_args()
    {"export": export, "prune": prune, "eval": evaluate}[args.step](args)


if __name__ == "__main__":
    main()
