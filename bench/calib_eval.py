"""Benchmark: statistics collection cost and dense evaluation of SmolLM2-135M.

Measures, in one process (so ratios are taken side by side on the same loaded machine):
1. layer-wise collection of the statistics LIAR needs (input Gram + input sums of every o_proj and
   down_proj) over ``--windows`` × ``--seq-len`` C4 calibration tokens, with peak resident memory
   during it (VmHWM reset via /proc/self/clear_refs) relative to the fp32 model size;
2. per batch, interleaved: one plain forward of the whole model, then the same forward with the
   observers attached (whole-model collection); time ratios of both collection paths vs plain;
3. dense WikiText-2 perplexity (L = ``--ppl-seq-len``, first ``--ppl-windows`` windows) through
   ``Engine.perplexity`` (what ``fxprune eval`` runs) and through a plain transformers loop
   (``model(input_ids, labels=input_ids).loss`` per window);
4. zero-shot acc/acc_norm on ``--tasks`` with ``--limit`` items.
Writes ``bench/results/calib_eval.json`` with the exact command, data hashes and settings.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fxprune.calibration.engine import Engine  # noqa: E402
from fxprune.calibration.layerwise import calibrate_layerwise  # noqa: E402
from fxprune.calibration.observers import Accumulation, Stat, StatsCollector, StatsRequest  # noqa: E402
from fxprune.commands.eval import _versions  # noqa: E402
from fxprune.data import CalibrationConfig, calibration_windows, evaluation_windows, resolve, tokenizer_for  # noqa: E402
from fxprune.evaluation.tasks import load_task  # noqa: E402
from fxprune.loading import load_model  # noqa: E402


def rss_kb(field: str = "VmRSS") -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class Clock:
    """Wall and process-CPU seconds (CPU time is robust to other processes sharing the cores)."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def reset_peak() -> None:
    gc.collect()
    try:  # return freed heap pages (e.g. GGUF de-quantisation buffers) so the peak counts live memory
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accumulation", default="mixed", choices=[a.value for a in Accumulation])
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--ppl-windows", type=int, default=64)
    ap.add_argument("--tasks", default="arc_easy,piqa")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stages", default="calib,ppl,zeroshot")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "calib_eval.json"))
    ap.add_argument("--merge", action="store_true", help="update an existing results file (stages run apart)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stages = set(args.stages.split(","))
    res: dict = json.loads(Path(args.out).read_text()) if args.merge and Path(args.out).is_file() else {}
    run = {"command": " ".join([sys.executable, *sys.argv]), "settings": vars(args),
           "versions": _versions(), "torch_threads": torch.get_num_threads()}
    res.setdefault("runs", []).append(run)

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))

    base_kb = rss_kb()
    t = time.perf_counter()
    lm = load_model(args.model)
    model, tok = lm.model, tokenizer_for(lm)
    run["load_s"] = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    model_mb = n_params * 4 / 2**20
    res["model"] = {"source": lm.source, "params": n_params, "fp32_mb": model_mb}
    engine = Engine()

    if "calib" in stages or "layerwise" in stages:  # "layerwise": part 1 only (memory probe)
        cfg = CalibrationConfig("c4", samples=args.windows, seq_len=args.seq_len, seed=0)
        cal = calibration_windows(tok, cfg, evaluation_files=[resolve("wikitext2")])
        names = [n for n, _ in model.named_modules() if n.endswith(("o_proj", "down_proj"))]
        req = StatsRequest.for_modules(names, [Stat.INPUT_GRAM, Stat.INPUT_SUM],
                                       accumulation=Accumulation(args.accumulation))
        batches = engine.batches(cal.ids, args.batch_size)
        res["calibration"] = {**cal.protocol(), "modules": len(names), "stats": ["input_gram", "input_sum"],
                              "accumulation": args.accumulation, "batch_size": args.batch_size}

        # 1. layer-wise, streaming (each block's stats consumed by on_block, then dropped)
        summary = {}

        def on_block(i, block, stats, ctx):
            for n, s in stats.items():
                summary[n] = (float(torch.linalg.matrix_norm(s.gram)), float(s.input_sum.norm()), s.count)

        reset_peak()
        before_kb = rss_kb()
        lw = Clock()
        with lw:
            calibrate_layerwise(model, batches, req, on_block=on_block, keep_stats=False)
        lw_s = lw.wall
        peak_kb = rss_kb("VmHWM")
        hidden_mb = cal.ids.numel() * model.config.hidden_size * 4 / 2**20
        block = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
        block_mb = sum(p.numel() for p in block.parameters()) * 4 / 2**20
        stats_block_mb = (model.config.hidden_size ** 2 + model.config.intermediate_size ** 2) * 8 / 2**20
        res["layerwise"] = {"seconds": lw_s, "rss_before_mb": before_kb / 1024, "peak_rss_mb": peak_kb / 1024,
                            "peak_minus_before_mb": (peak_kb - before_kb) / 1024,
                            "baseline_before_model_mb": base_kb / 1024,
                            "peak_minus_baseline_over_model": (peak_kb - base_kb) / 1024 / model_mb,
                            "hidden_stream_mb": hidden_mb, "one_block_weights_mb": block_mb,
                            "one_block_stats_fp64_mb": stats_block_mb}
        save()

    # 2. interleaved: plain forward vs forward with observers (whole model)
    if "calib" in stages:
        from tqdm.auto import tqdm
        plain, hooked = Clock(), Clock()
        whole = StatsCollector(model, req)
        with torch.no_grad():
            for b in tqdm(batches, desc="plain vs observed forward", leave=False):
                with plain:
                    model(**b, use_cache=False)
                with whole:
                    whole.set_token_mask(None, tuple(b["input_ids"].shape))
                    with hooked:
                        model(**b, use_cache=False)
        plain_s, hooked_s = plain.wall, hooked.wall
        ws = whole.result()
        rel = max(max(abs(ws[n].gram.norm().item() - summary[n][0]) / summary[n][0],
                      abs(ws[n].input_sum.norm().item() - summary[n][1]) / summary[n][1]) for n in names)
        res["timing"] = {"plain_forward_s": plain_s, "whole_model_with_observers_s": hooked_s,
                         "layerwise_s": lw_s, "ratio_whole_vs_plain": hooked_s / plain_s,
                         "ratio_layerwise_vs_plain": lw_s / plain_s,
                         "cpu_plain_forward_s": plain.cpu, "cpu_whole_model_with_observers_s": hooked.cpu,
                         "cpu_layerwise_s": lw.cpu, "cpu_ratio_whole_vs_plain": hooked.cpu / plain.cpu,
                         "cpu_ratio_layerwise_vs_plain": lw.cpu / plain.cpu,
                         "tokens": cal.ids.numel(), "plain_tokens_per_s": cal.ids.numel() / plain_s}
        res["layerwise_vs_whole_max_rel_diff"] = rel
        res["counts_equal"] = all(ws[n].count == summary[n][2] == cal.ids.numel() for n in names)
        del ws, whole
        save()

    if "ppl" in stages:
        w = evaluation_windows(tok, "wikitext2", args.ppl_seq_len, args.ppl_windows)
        t = time.perf_counter()
        r = engine.perplexity(model, w.ids, batch_size=1)
        fx_s = time.perf_counter() - t
        t = time.perf_counter()
        losses = []
        with torch.no_grad():
            for row in w.ids:
                losses.append(model(input_ids=row[None], labels=row[None], use_cache=False).loss.double())
        plain = math.exp(torch.stack(losses).mean().item())
        res["perplexity"] = {"fxprune": r.ppl, "plain_transformers_loop": plain,
                             "rel_diff": abs(r.ppl - plain) / plain, "predicted_tokens": r.tokens,
                             "fxprune_s": fx_s, "plain_s": time.perf_counter() - t, **w.protocol(),
                             "equivalent_cli": f"fxprune eval {args.model} --ppl wikitext2 --seq-len "
                                               f"{args.ppl_seq_len} --windows {args.ppl_windows} --json"}
        save()

    if "zeroshot" in stages:
        res["zeroshot"] = {}
        for name in [s for s in args.tasks.split(",") if s]:
            items, proto = load_task(name, limit=args.limit)
            t = time.perf_counter()
            r = engine.zeroshot(model, tok, items)
            res["zeroshot"][name] = {"acc": r.acc, "acc_norm": r.acc_norm, **proto,
                                     "seconds": time.perf_counter() - t}
            save()
        res["zeroshot_cli"] = (f"fxprune eval {args.model} --tasks {args.tasks} --limit {args.limit} --json")
    save()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
