"""Benchmark: does pruning make SmolLM2 faster where people run it? Prefill and decode tokens/s in
PyTorch eager, torch.compile and llama.cpp (f16, q8_0, q4_0), dense and pruned, against the ideal
speedup of fxprune's sympy cost model.

    # 1. prune (the shipped best structured recipe at several targets, widths rounded for q4_0) and export
    .venv/bin/python bench/speed.py prepare --targets 0.2 0.3 0.5 --uniform 0.5
    # 2. time everything, interleaved (run in the background: nohup ... &)
    .venv/bin/python bench/speed.py run --threads 1 --repeats 7

Models (``out/speed/``, not committed): ``dense`` = SmolLM2-135M-Instruct (the GGUF's weights
dequantised to fp32, as fxprune loads it); ``global-T`` = ``goa-liar-ffn-global-20`` with target T
(fraction of decoder linear parameters removed; per-layer FFN widths) and ``--deploy-dtype q4_0``
(FFN widths multiples of 32, so no export padding); ``uniform-T`` = the same criterion and
reconstruction with uniform allocation (one FFN width everywhere): the per-layer-width model's
equal-parameter control.

Protocol (``run``): every engine uses ``--threads`` threads. A repeat visits every (model, engine)
once, models in a fresh random order per repeat (seeded), and measures:
* prefill: one forward of a 512-token prompt (WikiText-2 test text) from an empty cache, logits of the
  last token only (PyTorch ``logits_to_keep=1``; llama.cpp's default);
* decode b=1 and b=8: 128 greedy steps after a 16-token prompt (batch 8: eight different prompts in
  one batch; llama.cpp: eight sequences of one context), timing only the 128 steps.
PyTorch eager: ``DynamicCache``; torch.compile: prefill = the compiled module (``dynamic=False``),
decode = a compiled step function over a ``StaticCache`` (one compilation per model and batch size,
before the first repeat). llama.cpp: llama-cpp-python 0.3.36's C API in its default configuration
(f16 KV cache, flash attention auto), one context per batch size. First call of each measurement
is a warm-up (discarded).

Ideal speedups (``fxprune.passes.cost``, dense / pruned): prefill = decoder FLOPs per token at L=512
(attention 4*L*q_width: the full masked score matrix, as llama.cpp computes it) plus the LM head once
per prompt; decode = matmul weight entries read per token (``FLOPs/token at L=0`` / 2: all decoder
linears and the tied LM head; at one type for all 2-D tensors the byte ratio equals this ratio).
Results: ``bench/results/speed.json`` (raw times, protocol) and ``bench/results/speed.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WORK = ROOT / "out" / "speed"
RECIPE = "goa-liar-ffn-global-20"
DTYPES = ("f16", "q8_0", "q4_0")


# ----------------------------------------------------------------------------------------- prepare
def _recipe_file(target: float, allocation: str) -> Path:
    """The shipped best recipe with ``target`` and ``allocation`` set on its structured step."""
    from dataclasses import replace

    import yaml

    from fxprune.recipe import load_recipe
    from fxprune.steps.structured import StructuredStep
    r = load_recipe(RECIPE).with_target(target)
    r = replace(r, steps=tuple(replace(s, allocation=allocation) if isinstance(s, StructuredStep) else s
                               for s in r.steps))
    p = WORK / f"recipe-{allocation}-{target}.yaml"
    p.write_text(yaml.safe_dump(r.to_dict()))
    return p


def _fx(*args, log):
    cmd = [sys.executable, "-m", "fxprune", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})


def prepare(args):
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "prepare.log"
    models = {"dense": "smollm2"}
    for t in args.targets:
        models[f"global-{t}"] = ("global", t)
    for t in args.uniform:
        models[f"uniform-{t}"] = ("uniform", t)
    for name, spec in models.items():
        src = spec
        if isinstance(spec, tuple):
            src = WORK / name
            if not (src / "config.json").is_file():
                _fx("prune", "smollm2", "--recipe", _recipe_file(spec[1], spec[0]), "--deploy-dtype", "q4_0",
                    "--out", src, "--json", log=log)
        for dt in DTYPES + ("f32",) * args.f32:
            out = WORK / f"{name}.{dt}.gguf"
            if not out.is_file():
                _fx("export", src, "--to", "gguf", "--out", out, "--dtype", dt, log=log)
    (WORK / "models.json").write_text(json.dumps({k: str(v if not isinstance(v, tuple) else WORK / k)
                                                  for k, v in models.items()}, indent=1))
    print(f"prepared {list(models)} in {WORK}")


# ----------------------------------------------------------------------------------------- timing
def _now():
    """(wall, process CPU) clocks. With one compute thread the process CPU time is the work done,
    whatever else runs on a shared machine; the wall time also counts the time spent waiting for a core."""
    return time.perf_counter(), time.process_time()


def _since(t0):
    w, c = _now()
    return w - t0[0], c - t0[1]


class TorchRunner:
    """PyTorch eager or torch.compile on one model."""

    def __init__(self, model, compiled: bool, prompt_len: int, decode_prompt: int, new: int):
        import torch
        self.torch, self.model, self.compiled = torch, model, compiled
        self.new, self.decode_prompt = new, decode_prompt
        self.fwd = torch.compile(model, dynamic=False) if compiled else model
        self.steps = {}

    def prefill(self, ids):
        with self.torch.inference_mode():
            t0 = _now()
            self.fwd(input_ids=ids[None], use_cache=False, logits_to_keep=1)
            return _since(t0)

    def _step_fn(self, batch):
        torch = self.torch
        if batch in self.steps:
            return self.steps[batch]
        from transformers import DynamicCache, StaticCache
        model = self.model
        if not self.compiled:
            def run(prompts):
                cache = DynamicCache(config=model.config)
                out = model(input_ids=prompts, past_key_values=cache, use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1)
                t0 = _now()
                for _ in range(self.new):
                    out = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True)
                    nxt = out.logits[:, -1].argmax(-1)
                return _since(t0)
        else:
            max_len = self.decode_prompt + self.new + 1

            def step(ids, pos, cache):
                return model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits

            cstep = torch.compile(step, dynamic=False)

            def run(prompts):
                cache = StaticCache(config=model.config, max_cache_len=max_len)
                n = prompts.shape[1]
                out = model(input_ids=prompts, past_key_values=cache, cache_position=torch.arange(n),
                            use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1)
                t0 = _now()
                for i in range(self.new):
                    lg = cstep(nxt[:, None], torch.tensor([n + i]), cache)
                    nxt = lg[:, -1].argmax(-1)
                return _since(t0)
        self.steps[batch] = run
        return run

    def decode(self, prompts):
        with self.torch.inference_mode():
            return self._step_fn(prompts.shape[0])(prompts)


class LlamaCppRunner:
    """llama.cpp on one GGUF file: a 1-sequence context and an 8-sequence context."""

    def __init__(self, path, threads, prompt_len, decode_prompt, new, batches):
        from fxprune.export.llamacpp import LlamaCppModel
        self.new = new
        self.ctx = {1: LlamaCppModel(path, n_ctx=max(prompt_len, decode_prompt + new) + 8, n_batch=prompt_len,
                                     threads=threads, exact=False)}
        for b in batches:
            if b > 1:
                per = decode_prompt + new + 8
                self.ctx[b] = LlamaCppModel(path, n_ctx=b * per, n_batch=max(prompt_len, b * decode_prompt),
                                            n_seq=b, threads=threads, exact=False)

    def prefill(self, ids):
        m = self.ctx[1]
        ids = ids.tolist()
        m.clear()
        t0 = _now()
        m.decode(ids, range(len(ids)), [0] * len(ids), [False] * (len(ids) - 1) + [True])
        m.logits(1)
        return _since(t0)

    def decode(self, prompts):
        import numpy as np
        b, n = prompts.shape
        m = self.ctx[b]
        m.clear()
        toks, pos, seq, outs = [], [], [], []
        for s in range(b):
            row = prompts[s].tolist()
            toks += row
            pos += list(range(n))
            seq += [s] * n
            outs += [False] * (n - 1) + [True]
        m.decode(toks, pos, seq, outs)
        nxt = np.argmax(m.logits(b), axis=-1)
        t0 = _now()
        for i in range(self.new):
            m.decode(nxt.tolist(), [n + i] * b, list(range(b)), [True] * b)
            nxt = np.argmax(m.logits(b), axis=-1)
        return _since(t0)

    def close(self):
        for m in self.ctx.values():
            m.close()


def ideal(model_dir_or_spec, seq_len):
    """FLOPs/token of the decoder at L=seq_len (no LM head), LM-head FLOPs/token, matmul weights/token."""
    from fxprune.analysis.analyser import analyse
    from fxprune.loading import load_model
    from fxprune.passes.cost import build_cost_model
    m = load_model(model_dir_or_spec).model
    cost = build_cost_model(m, analyse(m))
    head = 2 * m.get_output_embeddings().weight.numel()
    f_l = cost.evaluate(cost.flops_per_token, {}, seq_len)
    f_0 = cost.evaluate(cost.flops_per_token, {}, 0)
    return {"decoder_flops_per_token": f_l - head, "head_flops_per_token": head,
            "matmul_weights_per_token": f_0 // 2, "params": cost.evaluate(cost.params, {}),
            "linear_params": cost.evaluate(cost.linear_params, {})}


def _stats(xs):
    xs = sorted(xs)
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs)}


def run(args):
    import torch
    torch.set_num_threads(args.threads)
    from fxprune.data import evaluation_windows
    from fxprune.loading import load_model
    models = json.loads(Path(args.models_json or WORK / "models.json").read_text())
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models}
    engines = args.engines
    tok = load_model("smollm2").tokenizer
    text_ids = evaluation_windows(tok, "wikitext2", args.prompt, 2 + args.batch_max).ids
    prompt = text_ids[0]
    dprompts = text_ids[1:, :args.decode_prompt]
    batches = [b for b in (1, args.batch_max) if b]
    out = {"protocol": {
        "threads": args.threads, "repeats": args.repeats, "prompt_tokens": args.prompt, "new_tokens": args.new,
        "decode_prompt_tokens": args.decode_prompt, "batches": batches, "clock": args.clock, "engines": engines, "seed": args.seed,
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)", "python": platform.python_version(),
        "torch": torch.__version__, "llama_cpp_python": _version("llama_cpp"),
        "llamacpp_extra_buffers": _extra_buffers(),
        "command": " ".join([sys.executable] + sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
        "models": {}, "times": []}
    print(f"computing ideal costs for {list(models)}", flush=True)
    for name, spec in models.items():
        info = ideal(spec, args.prompt)
        info["files"] = {dt: (WORK / f"{name}.{dt}.gguf").stat().st_size for dt in DTYPES
                         if (WORK / f"{name}.{dt}.gguf").is_file()}
        out["models"][name] = info
    runners = {}
    for name, spec in models.items():
        tm = None
        for eng in engines:
            if eng in ("eager", "compile"):
                if tm is None:
                    tm = load_model(spec).model.eval()
                runners[(name, eng)] = TorchRunner(tm, eng == "compile", args.prompt, args.decode_prompt, args.new)
            else:
                dt = eng.split("-", 1)[1]
                runners[(name, eng)] = LlamaCppRunner(WORK / f"{name}.{dt}.gguf", args.threads, args.prompt,
                                                      args.decode_prompt, args.new, batches)
    # warm-up (and compilation) outside the timed repeats
    for key, r in runners.items():
        t0 = time.perf_counter()
        r.prefill(prompt)
        for b in batches:
            r.decode(dprompts[:b])
        print(f"warm-up {key}: {time.perf_counter() - t0:.1f}s", flush=True)
    rng = random.Random(args.seed)
    res_file = RESULTS / f"{args.tag}.json"
    for rep in range(args.repeats):
        order = list(runners)
        rng.shuffle(order)
        for key in order:
            r = runners[key]
            rec = {"repeat": rep, "model": key[0], "engine": key[1]}
            rec["prefill_s"], rec["prefill_cpu_s"] = r.prefill(prompt)
            for b in batches:
                rec[f"decode_b{b}_s"], rec[f"decode_b{b}_cpu_s"] = r.decode(dprompts[:b])
            out["times"].append(rec)
        print(f"repeat {rep + 1}/{args.repeats} done at {time.strftime('%H:%M:%S')}", flush=True)
        out["summary"] = summarise(out, args.clock)
        out["summary_other_clock"] = summarise(out, "wall" if args.clock == "cpu" else "cpu")
        res_file.write_text(json.dumps(out, indent=1))
        (RESULTS / f"{args.tag}.md").write_text(render(out))
    print(render(out))


def _extra_buffers():
    """Whether llama.cpp repacks weights into its extra CPU buffer types in this run (see
    ``fxprune.export.llamacpp.extra_buffers_default``: off on AMX CPUs)."""
    try:
        from fxprune.export.llamacpp import extra_buffers_default
        return extra_buffers_default()
    except Exception:
        return None


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def summarise(out, clock="wall"):
    """Per (model, engine): tok/s stats; per pruned model: speedup vs dense from per-repeat ratios.
    ``clock``: ``wall`` (elapsed) or ``cpu`` (process CPU time: the work done, robust to a shared machine)."""
    p = out["protocol"]
    suffix = "_s" if clock == "wall" else "_cpu_s"
    tokens = {"prefill_s": p["prompt_tokens"], **{f"decode_b{b}_s": p["new_tokens"] * b for b in p["batches"]}}
    by = {}
    for rec in out["times"]:
        for k, n in tokens.items():
            key = k[:-2] + suffix
            if key in rec:
                by.setdefault((rec["model"], rec["engine"], k), {})[rec["repeat"]] = n / rec[key]
    summary = {}
    for (model, eng, k), vals in by.items():
        s = _stats(list(vals.values()))
        dense = by.get(("dense", eng, k))
        if dense and model != "dense":
            ratios = [vals[r] / dense[r] for r in vals if r in dense]
            s["speedup"] = _stats(ratios)
            info, base = out["models"][model], out["models"]["dense"]
            if k == "prefill_s":
                L = p["prompt_tokens"]
                num = L * base["decoder_flops_per_token"] + base["head_flops_per_token"]
                den = L * info["decoder_flops_per_token"] + info["head_flops_per_token"]
            else:
                num, den = base["matmul_weights_per_token"], info["matmul_weights_per_token"]
            s["ideal"] = num / den
            s["achieved_over_ideal"] = (s["speedup"]["median"] - 1) / (s["ideal"] - 1) if s["ideal"] > 1 else None
            s["speedup_over_ideal"] = s["speedup"]["median"] / s["ideal"]
        twin = by.get(("uniform-" + model[len("global-"):], eng, k)) if model.startswith("global-") else None
        if twin:  # per-layer widths against uniform widths of the same parameter count
            s["over_uniform"] = _stats([vals[r] / twin[r] for r in vals if r in twin])
        summary[f"{model}|{eng}|{k}"] = s
    return summary


def render(out):
    p, S = out["protocol"], out.get("summary") or summarise(out, p_clock(out))
    lines = [f"# Speed of pruned SmolLM2-135M (bench/speed.py)", "",
             f"Command: `{p['command']}`. {p['machine']}; {p['threads']} thread(s) for every engine; "
             f"{p['repeats']} interleaved repeats (model order shuffled per repeat); medians, [min, max].",
             f"Prefill: {p['prompt_tokens']}-token prompt, last-token logits. Decode: {p['new_tokens']} greedy "
             f"steps after a {p['decode_prompt_tokens']}-token prompt, batch {p['batches']}. torch {p['torch']}, "
             f"llama-cpp-python {p['llama_cpp_python']} (extra CPU buffer types / weight repacking: "
             f"{ {True: 'on', False: 'off (AMX CPU)', None: 'default'}[p.get('llamacpp_extra_buffers')] }).", "",
             "speedup = per-repeat tok/s ratio pruned/dense (median [min, max]); ideal = sympy cost model "
             "(prefill: FLOPs per prompt; decode: matmul weights read per token); "
             "ratio = speedup / ideal.", "",
             "## Models", "", "| model | params | decoder linear | q4_0 / q8_0 / f16 file MiB | ideal prefill | ideal decode |",
             "|---|---|---|---|---|---|"]
    base = out["models"].get("dense")
    for name, info in out["models"].items():
        f = info.get("files", {})
        sizes = " / ".join(f"{f[d] / 2**20:.1f}" if d in f else "-" for d in ("q4_0", "q8_0", "f16"))
        L = p["prompt_tokens"]
        ip = (L * base["decoder_flops_per_token"] + base["head_flops_per_token"]) / \
             (L * info["decoder_flops_per_token"] + info["head_flops_per_token"])
        idd = base["matmul_weights_per_token"] / info["matmul_weights_per_token"]
        lines.append(f"| {name} | {info['params'] / 1e6:.2f}M | {info['linear_params'] / 1e6:.2f}M | {sizes} | "
                     f"{ip:.3f}x | {idd:.3f}x |")
    lines += _phase_tables(out, S, f"{p_clock(out)} clock")
    fits = overhead_fit(out)
    if fits:
        lines += ["", "## Where the time goes: t/token = a + b * cost (fit over all models)", "",
                  "| engine | phase | fixed a (ms/token) | fixed share of dense time |", "|---|---|---|---|"]
        for key, f in fits.items():
            eng, k = key.split("|")
            share = f["fixed_share_of_dense"]
            lines.append(f"| {eng} | {k[:-2]} | {1e3 * f['fixed_s_per_token']:.3f} | "
                         f"{'-' if share is None else f'{100 * share:.1f}%'} |")
    if out.get("summary_other_clock"):
        other = "wall" if p_clock(out) == "cpu" else "cpu"
        lines += ["", f"# The same runs on the {other} clock", ""]
        lines += _phase_tables(out, out["summary_other_clock"], f"{other} clock")
    return "\n".join(lines) + "\n"


def p_clock(out):
    return out["protocol"].get("clock", "wall")


def _phase_tables(out, S, label):
    p, lines = out["protocol"], []
    cols = [("prefill_s", "prefill")] + [(f"decode_b{b}_s", f"decode b={b}") for b in p["batches"]]
    for k, phase in cols:
        lines += ["", f"## {phase} (tokens/s, {label})", "", "| engine | model | tok/s | speedup | ideal | speedup/ideal |",
                  "|---|---|---|---|---|---|"]
        for eng in p["engines"]:
            for name in out["models"]:
                s = S.get(f"{name}|{eng}|{k}")
                if not s:
                    continue
                tps = f"{s['median']:.1f} [{s['min']:.1f}, {s['max']:.1f}]"
                if "speedup" in s:
                    sp = s["speedup"]
                    lines.append(f"| {eng} | {name} | {tps} | {sp['median']:.3f} [{sp['min']:.3f}, {sp['max']:.3f}] | "
                                 f"{s['ideal']:.3f} | {s['speedup_over_ideal']:.3f} |")
                else:
                    lines.append(f"| {eng} | {name} | {tps} | 1 | 1 | - |")
        for eng in p["engines"]:
            for name in out["models"]:
                s = S.get(f"{name}|{eng}|{k}")
                if s and "over_uniform" in s:
                    u = s["over_uniform"]
                    lines.append(f"\n{eng}: {name} (per-layer widths) / uniform widths of the same parameter count: "
                                 f"{u['median']:.3f} [{u['min']:.3f}, {u['max']:.3f}] (per-repeat tok/s ratio)")
    return lines


def overhead_fit(out):
    """Least-squares fit, per engine and phase, of seconds per token against the ideal cost per token
    (decode: matmul weights read; prefill: FLOPs) over all models: ``t = a + b * cost``. ``a`` is the
    part that does not shrink with pruning (per-token fixed work: graph, norms, rope, attention over the
    cache, logits copy, Python loop); a speedup short of ideal by more than the noise is explained
    when ``a > 0``: achieved = (a + b C_dense) / (a + b C_pruned)."""
    p, S = out["protocol"], out.get("summary") or summarise(out, p_clock(out))
    tokens = {"prefill_s": p["prompt_tokens"], **{f"decode_b{b}_s": p["new_tokens"] * b for b in p["batches"]}}
    fits = {}
    for eng in p["engines"]:
        for k in tokens:
            xs, ys = [], []
            for name, info in out["models"].items():
                s = S.get(f"{name}|{eng}|{k}")
                if not s:
                    continue
                cost = (info["decoder_flops_per_token"] + info["head_flops_per_token"] / p["prompt_tokens"]
                        if k == "prefill_s" else info["matmul_weights_per_token"])
                xs.append(cost)
                ys.append(1.0 / s["median"])
            if len(xs) < 3:
                continue
            n = len(xs)
            mx, my = sum(xs) / n, sum(ys) / n
            sxx = sum((x - mx) ** 2 for x in xs)
            b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
            a = my - b * mx
            dense = out["models"]["dense"]
            cd = (dense["decoder_flops_per_token"] + dense["head_flops_per_token"] / p["prompt_tokens"]
                  if k == "prefill_s" else dense["matmul_weights_per_token"])
            fits[f"{eng}|{k}"] = {"fixed_s_per_token": a, "s_per_cost": b,
                                  "fixed_share_of_dense": a / (a + b * cd) if a + b * cd > 0 else None}
    return fits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--targets", type=float, nargs="*", default=[0.2, 0.3, 0.5])
    pp.add_argument("--uniform", type=float, nargs="*", default=[0.5])
    pp.add_argument("--f32", type=int, default=0, help="1: also export f32 files")
    pr = sub.add_parser("run")
    pr.add_argument("--threads", type=int, default=1)
    pr.add_argument("--repeats", type=int, default=7)
    pr.add_argument("--prompt", type=int, default=512)
    pr.add_argument("--new", type=int, default=128)
    pr.add_argument("--decode-prompt", type=int, default=16)
    pr.add_argument("--batch-max", type=int, default=8)
    pr.add_argument("--engines", nargs="*", default=["eager", "compile", "llamacpp-f16", "llamacpp-q8_0",
                                                     "llamacpp-q4_0"])
    pr.add_argument("--models", nargs="*", default=None)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--clock", default="cpu", choices=["cpu", "wall"], help="the clock of the main tables "
                    "(both are recorded): cpu = process CPU time, the work done even on a shared machine "
                    "(meaningful with --threads 1), wall = elapsed time")
    pr.add_argument("--tag", default="speed")
    pr.add_argument("--models-json", default=None, help="name -> model spec (default out/speed/models.json)")
    a = ap.parse_args()
    prepare(a) if a.cmd == "prepare" else run(a)


if __name__ == "__main__":
    main()
