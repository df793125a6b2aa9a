"""``fxprune eval MODEL``: WikiText-2 (or any text file) perplexity and zero-shot accuracy.

Example: ``fxprune eval smollm2 --ppl wikitext2 --seq-len 512 --windows 64 --tasks arc_easy,piqa
--limit 200 --json`` prints ``{"ppl": {...}, "tasks": {...}, "protocol": {...}}``.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..arguments import ACCELERATORS, PRECISIONS, devices, positive_int, seq_len

NAME = "eval"
HELP = "Perplexity and zero-shot accuracy of a model (lm-eval log-likelihood protocol)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="smollm2, tiny:<family>, a .gguf file or a model directory")
    p.add_argument("--ppl", default="", help="comma-separated perplexity sets: wikitext2 or text-file paths")
    p.add_argument("--seq-len", type=seq_len, default=512, help="window length L in tokens (default 512)")
    p.add_argument("--windows", type=positive_int, default=None, help="use only the first N windows")
    p.add_argument("--tasks", default="", help="comma-separated zero-shot tasks (arc_easy, arc_challenge, "
                                                "boolq, openbookqa, piqa, winogrande, hellaswag; 'all' = these seven)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="first N items of each task (recorded; default: full sets)")
    p.add_argument("--scorer", default="own", choices=["own", "lm-eval"],
                   help="zero-shot scorer: fxprune's own (default; tested equal to lm-eval item by item) or "
                        "lm-eval-harness 0.4.x on the in-memory model (extra 'lmeval')")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--data-root", default=None, help="data directory (default $FXPRUNE_DATA or ../shared/data)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="perplexity windows per forward")
    p.add_argument("--accelerator", default="cpu", choices=ACCELERATORS, help="Lightning accelerator: cpu, gpu, auto")
    p.add_argument("--devices", default="1", type=devices, help="number of devices (several: DDP) or auto")
    p.add_argument("--precision", default="32-true", choices=PRECISIONS,
                   help="Lightning precision, e.g. bf16-mixed on GPU")
    p.add_argument("--engine", default="torch", choices=["torch", "llamacpp"],
                   help="llamacpp: perplexity of a .gguf file in llama.cpp on the PyTorch path's windows")
    p.add_argument("--tokenizer", default=None, help="llamacpp engine: cut windows with this model's "
                   "tokenizer (default: the model the GGUF was exported from)")
    p.add_argument("--threads", type=positive_int, default=1, help="llamacpp engine: CPU threads")


def _versions() -> dict:
    import lightning
    import torch
    import transformers
    from .. import __version__
    return {"fxprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "python": sys.version.split()[0]}


def run(args) -> int:
    if getattr(args, "engine", "torch") == "llamacpp":
        from ..export.evaluate import run as run_llamacpp
        return run_llamacpp(args)
    import torch
    from ..calibration.engine import Engine, EngineConfig
    from ..data import evaluation_windows, tokenizer_for
    from ..evaluation.suite import evaluate_suite, parse_tasks
    from ..evaluation.tasks import load_task
    from ..loading import load_model

    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    strategy = "ddp" if isinstance(devices, int) and devices > 1 else "auto"
    try:
        engine = Engine(EngineConfig(accelerator=args.accelerator, devices=devices, strategy=strategy,
                                     precision=args.precision))
        engine.launch()
    except Exception as e:  # Lightning refuses a setting this machine cannot run (no GPU, too many devices)
        from ..errors import ArgumentError
        raise ArgumentError(f"--accelerator {args.accelerator} --devices {args.devices} --precision "
                            f"{args.precision}: {type(e).__name__}: {e}") from e
    from ..preflight import JobSizes, check_job  # model files readable, the job fits in memory
    check_job(args.model, out=None, sizes=JobSizes("eval", eval_seq_len=args.seq_len if args.ppl else 0,
                                                   eval_batch=args.batch_size))
    loaded = load_model(args.model)
    tok = tokenizer_for(loaded)
    model = engine.prepare(loaded.model)
    result = {"ppl": {}, "tasks": {}, "protocol": {
        "model": loaded.source, "seq_len": args.seq_len, "windows": args.windows, "limit": args.limit,
        "precision": args.precision, "world_size": engine.world_size,
        "perplexity": "exp(sum NLL / predicted tokens), non-overlapping windows, L-1 predictions each",
        "zeroshot": ("own scorer, lm-eval loglikelihood protocol (shared-context scoring); acc_norm = ll / "
                     "len(choice) in characters, as lm-eval") if args.scorer == "own" else
                    "lm-eval-harness (official task templates, local data files), in-memory HF model",
        "data": {}, "versions": _versions()}}
    with torch.no_grad():
        for name in [s for s in args.ppl.split(",") if s]:
            w = evaluation_windows(tok, name, args.seq_len, args.windows, root=args.data_root)
            r = engine.perplexity(model, w.ids, batch_size=args.batch_size)
            result["ppl"][name] = r.ppl
            result["protocol"]["data"][name] = {**w.protocol(), "predicted_tokens": r.tokens}
        tasks = parse_tasks(args.tasks)
        if tasks:
            zs = evaluate_suite(model, tok, tasks, limit=args.limit, root=args.data_root, engine=engine,
                                scorer=args.scorer)
            for name, r in zs["tasks"].items():
                result["tasks"][name] = {"acc": r["acc"], "acc_norm": r["acc_norm"], "seconds": r["seconds"]}
                result["protocol"]["data"][name] = {**load_task(name, args.data_root, args.limit)[1], "items": r["items"]}
            result["average"] = zs["average"]
            result["protocol"]["full_sets"] = zs["full_sets"]
    if engine.is_main:
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for k, v in result["ppl"].items():
                print(f"ppl {k}: {v:.4f}")
            for k, v in result["tasks"].items():
                print(f"{k}: acc {v['acc']:.4f} acc_norm {v['acc_norm']:.4f} ({v['seconds']}s)")
            if "average" in result:
                a = result["average"]
                print(f"average of {a['tasks']} tasks: acc {a['acc']:.4f} acc_norm {a['acc_norm']:.4f}"
                      + ("" if args.limit is None else f" (first {args.limit} items of each task)"))
    return 0
