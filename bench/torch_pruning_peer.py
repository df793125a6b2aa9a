"""Peer baseline for issue 4: Torch-Pruning 1.6.1, the magnitude setup of its LLM example
(examples/LLMs/prune_llm.py), heads + FFN only, on the same SmolLM2-135M fp32 copy and the same
WikiText-2 windows as bench/structured.py, under a hard wall-clock bound.

Torch-Pruning lives in its own venv (/work/venv-tp: torch 2.13.0 CPU, transformers 5.24.0 -- the
version /work/main/.venv has --, torch-pruning 1.6.1); the project's venv stays clean. Stages:

    # orchestrator (project venv): prune in the TP venv, killed after --timeout-min; evaluate if it finished
    .venv/bin/python bench/torch_pruning_peer.py run --timeout-min 60
    # where the time goes: cProfile of the same prune for --seconds, and the index-drift trace
    .venv/bin/python bench/torch_pruning_peer.py profile --seconds 180
    .venv/bin/python bench/torch_pruning_peer.py diagnose --seconds 40

`prune`, `_profile` and `_diagnose` run inside /work/venv-tp (started by the stages above); `eval` runs
in the project venv (fxprune.data.evaluation_windows + fxprune.calibration.Engine().perplexity, exactly
as one_run in bench/structured.py). Everything runs on 1 thread. Results: bench/results/torch_pruning_peer.json.

Setup, as in the example (commit 566a887 of examples/LLMs/prune_llm.py, the one written for the 1.6 API):
BasePruner (== MetaPruner, an alias in 1.6.1) with GroupMagnitudeImportance(p=2, group_reduction='mean')
(== MagnitudeImportance, an alias in 1.6.1), global_pruning=False, example input tokenizer.encode("Hello
world."), output_transform=lambda x: x.logits, num_heads {q: 9, k: 3, v: 3}, prune_num_heads=True,
prune_head_dims=False, head_pruning_ratio = pruning_ratio, round_to=4, out_channel_groups={} (no fused
gate_up here), ignored_layers=[lm_head], then `for g in pruner.step(interactive=True): g.prune()` and the
example's attribute/config update block. Adaptations (see ADAPTATIONS below, also written to the results).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
OUT_JSON = RESULTS / "torch_pruning_peer.json"
MODEL_DIR = RESULTS / "tmp" / "smollm2-fp32"
WORK = RESULTS / "tmp" / "torch_pruning_peer"
TP_PY = os.environ.get("TP_PYTHON", "/work/venv-tp/bin/python")
EVAL_WINDOWS = {128: 16, 512: 4}  # the windows of bench/results/structured.md
TARGET = 0.20  # fraction of decoder linear parameters to remove
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

ADAPTATIONS = [
    "fp32 on CPU, 1 thread (example: fp16, device_map='auto', CUDA); model = the fp32 save_pretrained copy "
    "of SmolLM2-135M-Instruct used by bench/structured.py, loaded with AutoModelForCausalLM.from_pretrained "
    "(transformers 5 default attention = sdpa, as the example's LlamaSdpaAttention).",
    "AutoTokenizer.from_pretrained(dir) without use_fast=False (transformers 5 has a single tokenizer backend); "
    "the tokenizer only makes the example input 'Hello world.'.",
    "heads + FFN only: ignored_layers=[lm_head, embed_tokens] (example: [lm_head]). The hidden-size group "
    "(embeddings, RMSNorm weights, o_proj/down_proj outputs, lm_head inputs) contains embed_tokens' output "
    "channels, so DependencyGraph.get_all_groups skips it; SmolLM2 ties lm_head to embed_tokens anyway.",
    "pruning_ratio = head_pruning_ratio chosen for a 20% decoder-linear budget (example: one --pruning_ratio "
    "for both): see 'budget' (TP 1.6.1 removes ceil(ceil(r*9)/3) q heads per KV group under local GQA "
    "pruning, i.e. 3 of 9 q heads for any 0 < r <= 1/3, and FFN channels 1536-int(1536(1-r)) rounded so "
    "that the kept count is a multiple of 4).",
    "no WikiText evaluation from the example (datasets/hub are unreachable): the pruned model is saved and "
    "evaluated with the project's evaluation (same windows as bench/results/structured.md).",
    "the example's post-pruning attribute update is kept verbatim (m.hidden_size, m.num_heads, "
    "config.num_attention_heads, m.num_key_value_groups, mlp.hidden_size, config.intermediate_size); "
    "config.head_dim is already 64 in the saved config, so the pruned model reloads with its new shapes.",
]


# ----------------------------------------------------------------------------------------------
# budget arithmetic (mirrors BasePruner._prune / _round_to of torch-pruning 1.6.1)
def planned_budget(r: float, n_layers=30, hidden=576, n_q=9, n_kv=3, head_dim=64, inter=1536, round_to=4):
    heads_removed = 0
    if r > 0:
        per_kv = math.ceil(math.ceil(r * n_q) / n_kv)
        heads_removed = min(per_kv * n_kv, n_q)
    keep = inter - (inter - int(inter * (1 - r)))
    keep = keep - keep % round_to
    ffn_removed = inter - keep
    per_layer = (2 * n_q * head_dim * hidden + 2 * n_kv * head_dim * hidden + 3 * hidden * inter)
    removed = 2 * heads_removed * head_dim * hidden + 3 * hidden * ffn_removed
    return {"pruning_ratio": r, "q_heads_removed_per_layer": heads_removed, "ffn_channels_removed_per_layer": ffn_removed,
            "decoder_linear_before": per_layer * n_layers, "decoder_linear_removed": removed * n_layers,
            "fraction": removed / per_layer}


def choose_ratio(target=TARGET):
    best = None
    for k in range(1, 3334):
        r = round(k / 10000, 4)
        b = planned_budget(r)
        if best is None or abs(b["fraction"] - target) < abs(best["fraction"] - target) - 1e-12:
            best = b
    # the middle of the interval of ratios that give the same plan (robust to float rounding)
    same = [round(k / 10000, 4) for k in range(1, 3334)
            if planned_budget(round(k / 10000, 4))["fraction"] == best["fraction"]]
    return planned_budget(same[len(same) // 2])


def decoder_linear(model):
    import torch
    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in LINEAR_NAMES)


def versions():
    from importlib.metadata import version
    out = {"python": sys.version.split()[0]}
    for p in ("torch", "transformers", "torch-pruning", "numpy"):
        try:
            out[p] = version(p)
        except Exception:  # noqa: BLE001
            pass
    return out


# ----------------------------------------------------------------------------------------------
# inside /work/venv-tp
def _load_and_pruner_args(ratio, threads):
    import torch
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    import torch_pruning as tp
    text = "Hello world."
    inputs = torch.tensor(tok.encode(text)).unsqueeze(0)
    num_heads, out_channel_groups = {}, {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads
        if name.endswith("mlp") and hasattr(m, "gate_up_proj"):
            out_channel_groups[m.gate_up_proj] = 2
    kw = dict(example_inputs=inputs, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
              global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=ratio,
              ignored_layers=[model.lm_head, model.model.embed_tokens], num_heads=num_heads, prune_num_heads=True,
              prune_head_dims=False, head_pruning_ratio=ratio, out_channel_groups=out_channel_groups, round_to=4)
    return model, tok, inputs, kw


def stage_prune(args):
    """Build the pruner (dependency graph + groups), prune, save. Writes progress.json as it goes."""
    import torch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prog = {"pid": os.getpid(), "versions": versions()}

    def mark(phase, **kw):
        prog.setdefault("phases", []).append({"phase": phase, "at": time.time(), **kw})
        prog.update(kw)
        (out / "progress.json").write_text(json.dumps(prog, indent=1))
        print(f"[{time.strftime('%H:%M:%S')}] {phase} {kw}", flush=True)

    mark("load")
    model, tok, inputs, kw = _load_and_pruner_args(args.ratio, args.threads)
    import torch_pruning as tp
    from torch_pruning import dependency
    cfg = model.config
    _is_gqa = cfg.num_attention_heads != cfg.num_key_value_heads
    params_before = sum(p.numel() for p in model.parameters())
    dl_before = decoder_linear(model)
    with torch.no_grad():
        ref_in = torch.tensor(tok.encode("The quick brown fox jumps over the lazy dog.")).unsqueeze(0)
    # time the dependency tracing separately from the group enumeration that BasePruner.__init__ does next
    # (a pure timing wrapper: same call, same arguments, same result)
    orig_build = dependency.DependencyGraph.build_dependency
    timing = {}

    def timed_build(self, *a, **k):
        t = time.perf_counter()
        r = orig_build(self, *a, **k)
        timing["trace_seconds"] = time.perf_counter() - t
        mark("groups", trace_seconds=timing["trace_seconds"])
        return r
    dependency.DependencyGraph.build_dependency = timed_build
    mark("build_pruner", params_before=params_before, decoder_linear_before=dl_before)
    t0 = time.perf_counter()
    pruner = tp.pruner.BasePruner(model, **kw)
    group_building = time.perf_counter() - t0
    dependency.DependencyGraph.build_dependency = orig_build
    mark("step", group_building_seconds=group_building)
    t1 = time.perf_counter()
    n_groups = 0
    for g in pruner.step(interactive=True):
        g.prune()
        n_groups += 1
    # the example's attribute update, verbatim apart from the separate-qkv branch being the only one here
    model.config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.hidden_size = m.q_proj.out_features
            m.num_heads = m.hidden_size // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not _is_gqa:
                m.num_key_value_heads = m.num_heads
                model.config.num_key_value_heads = m.num_heads
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = m.num_heads // model.config.num_key_value_heads
        elif name.endswith("mlp"):
            m.hidden_size = m.gate_proj.in_features
            model.config.intermediate_size = m.gate_proj.out_features
    if not _is_gqa:
        model.config.num_key_value_heads = model.config.num_attention_heads
    pruning = time.perf_counter() - t1
    del pruner
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in LINEAR_NAMES:
            shapes.setdefault(tuple(m.weight.shape), []).append(name)
    with torch.no_grad():
        ref_logits = model(ref_in).logits
    torch.save({"input_ids": ref_in, "logits": ref_logits}, out / "ref_logits.pt")
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    dl_after = decoder_linear(model)
    mark("done", pruning_seconds=pruning, groups_pruned=n_groups, params_after=sum(p.numel() for p in model.parameters()),
         decoder_linear_after=dl_after, fraction_decoder_linear_removed=1 - dl_after / dl_before,
         config_after={k: getattr(model.config, k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                             "head_dim", "intermediate_size")},
         linear_shapes={"x".join(map(str, k)): len(v) for k, v in shapes.items()})


class _Stop(Exception):
    pass


def stage_profile_inner(args):
    """cProfile the pruner construction (the group building) for args.seconds, then report."""
    import cProfile
    import io
    import pstats
    model, tok, inputs, kw = _load_and_pruner_args(args.ratio, args.threads)
    import torch_pruning as tp

    def alarm(*_):
        raise _Stop()
    signal.signal(signal.SIGALRM, alarm)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    signal.alarm(args.seconds)
    finished = False
    prof.enable()
    try:
        tp.pruner.BasePruner(model, **kw)
        finished = True
    except _Stop:
        pass
    prof.disable()
    signal.alarm(0)
    secs = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = []
    for (fn, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        short = fn.split("site-packages/")[-1]
        rows.append({"function": f"{short}:{line}({func})", "calls": nc, "tottime": round(tt, 2), "cumtime": round(ct, 2)})
    top_tot = sorted(rows, key=lambda r: -r["tottime"])[:15]
    top_cum = [r for r in sorted(rows, key=lambda r: -r["cumtime"]) if "torch_pruning" in r["function"]][:15]
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    res = {"profiled_seconds": secs, "finished": finished, "top_tottime": top_tot, "top_cumtime_torch_pruning": top_cum}
    print("PROFILE " + json.dumps(res))
    print(s.getvalue()[:6000], file=sys.stderr)


def stage_diagnose_inner(args):
    """Trace the group that does not finish: for every group root, how long; for the stuck one, how its
    index lists evolve (Group.add_dep is wrapped for observation only)."""
    import collections
    model, tok, inputs, kw = _load_and_pruner_args(args.ratio, args.threads)
    import torch_pruning as tp
    from torch_pruning.dependency import graph as GR, group as G
    t0 = time.perf_counter()
    DG = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, output_transform=kw["output_transform"])
    trace_s = time.perf_counter() - t0
    name_of = {m: n for n, m in model.named_modules()}
    state = {"root": None, "t": None, "samples": [], "per_node": collections.defaultdict(list),
             "visits": collections.Counter()}
    orig_add = G.Group.add_dep

    def add_dep(self, dep, idxs):
        orig_add(self, dep, idxs)
        node = str(dep.target)
        pn = state["per_node"][node]
        vals = [i.idx for i in idxs]
        rec = [len(vals), min(vals, default=None), max(vals, default=None)]
        if len(pn) < 4:
            pn.append(rec)
        else:
            pn[3] = rec  # the latest visit
        state["visits"][node] += 1
        n = len(self._group)
        if n in (100, 1000, 3000, 10000, 20000) or n % 5000 == 0:
            state["samples"].append({"seconds_in_group": round(time.perf_counter() - state["t"], 1), "group_len": n})
        if time.perf_counter() - t0 > args.seconds:
            raise _Stop()
    G.Group.add_dep = add_dep
    orig_gpg = GR.DependencyGraph.get_pruning_group
    groups = []

    def gpg(self, module, fn, idxs):
        state["root"], state["t"], state["samples"] = name_of.get(module, str(module)), time.perf_counter(), []
        state["per_node"].clear()
        state["visits"].clear()
        g = orig_gpg(self, module, fn, idxs)
        groups.append({"root": state["root"], "len": len(g), "seconds": round(time.perf_counter() - state["t"], 2)})
        return g
    GR.DependencyGraph.get_pruning_group = gpg
    stuck = None
    try:
        for _ in DG.get_all_groups(ignored_layers=[m for l in kw["ignored_layers"] for m in l.modules()],
                                   root_module_types=[tp.ops.TORCH_LINEAR]):
            pass
    except _Stop:
        nodes = [k for k in state["per_node"] if state["root"] + " " in k] + \
            [k for k, _ in state["visits"].most_common(5)]
        stuck = {"root": state["root"], "seconds_in_group": round(time.perf_counter() - state["t"], 1),
                 "growth": state["samples"],
                 "note": "per node: times it was added to the group, and [len, min idx, max idx] of the index list "
                         "at the first three visits and at the latest one",
                 "nodes": {k[:100]: {"visits": state["visits"][k], "index_lists": state["per_node"][k]}
                           for k in dict.fromkeys(nodes)}}
    res = {"trace_seconds": trace_s, "groups_finished": groups, "stuck_group": stuck,
           "observed_seconds": time.perf_counter() - t0}
    print("DIAG " + json.dumps(res))


# ----------------------------------------------------------------------------------------------
# project venv
def stage_eval(args):
    import resource
    import torch
    torch.set_num_threads(args.threads)
    from fxprune.calibration import Engine
    from fxprune.data import evaluation_windows, tokenizer_for
    from fxprune.loading import load_model
    d = Path(args.work)
    loaded = load_model(str(d / "model"))
    ref = torch.load(d / "ref_logits.pt")
    with torch.no_grad():
        logits = loaded.model(ref["input_ids"]).logits
    out = {"reload_max_abs_logit_diff": float((logits - ref["logits"]).abs().max())}
    tok = tokenizer_for(loaded)
    engine = Engine()
    for L, n in EVAL_WINDOWS.items():
        w = evaluation_windows(tok, "wikitext2", L, n)
        out[f"ppl_L{L}"] = engine.perplexity(loaded.model, w.ids).ppl
        out[f"eval_windows_L{L}"] = int(w.ids.shape[0])
    out["peak_rss_eval_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("EVAL " + json.dumps(out))


def _update_results(key, value):
    d = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {}
    d[key] = value
    OUT_JSON.write_text(json.dumps(d, indent=1) + "\n")


def _common():
    plan = choose_ratio()
    return plan, {"tool": "torch-pruning 1.6.1", "example": "VainF/Torch-Pruning examples/LLMs/prune_llm.py (magnitude)",
                  "model": str(MODEL_DIR.relative_to(ROOT)), "threads": 1, "target_decoder_linear": TARGET,
                  "budget": plan, "adaptations": ADAPTATIONS,
                  "settings": {"pruner": "tp.pruner.BasePruner (MetaPruner alias)",
                               "importance": "tp.importance.GroupMagnitudeImportance(p=2, group_reduction='mean') "
                                             "(MagnitudeImportance alias)",
                               "global_pruning": False, "pruning_ratio": plan["pruning_ratio"],
                               "head_pruning_ratio": plan["pruning_ratio"], "prune_num_heads": True,
                               "prune_head_dims": False, "round_to": 4, "num_heads": "q_proj 9, k_proj 3, v_proj 3",
                               "ignored_layers": ["lm_head", "model.embed_tokens"], "example_inputs": "'Hello world.'",
                               "output_transform": "lambda x: x.logits"}}


def _tp_versions():
    p = subprocess.run([TP_PY, "-c", "import json,sys; sys.path.insert(0, %r); from bench.torch_pruning_peer import versions; "
                        "print(json.dumps(versions()))" % str(ROOT)], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-300:]}


def _py_spy_dump(pid):
    exe = Path(TP_PY).parent / "py-spy"
    if not exe.exists():
        return None
    p = subprocess.run([str(exe), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    main = p.stdout.split('"MainThread"', 1)[-1].split("\nThread ", 1)[0]  # the main thread's stack only
    return "\n".join(l.strip() for l in main.splitlines() if l.startswith("    "))[:3000]


def run(args):
    sys.path.insert(0, str(ROOT))
    from bench.structured import prepare_model
    prepare_model()
    plan, res = _common()
    work = Path(args.work)
    if work.exists():
        import shutil
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cmd = [TP_PY, str(Path(__file__).resolve()), "prune", "--out", str(work), "--ratio", str(plan["pruning_ratio"]),
           "--threads", "1"]
    res.update({"command": " ".join([sys.executable, *sys.argv]), "prune_command": " ".join(cmd),
                "timeout_minutes": args.timeout_min, "versions_tp_venv": _tp_versions(), "versions_eval_venv": versions(),
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    log = open(work / "prune.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(ROOT))
    deadline = t0 + args.timeout_min * 60
    stacks, next_dump = [], t0 + args.dump_every_min * 60
    while p.poll() is None and time.perf_counter() < deadline:
        time.sleep(5)
        if args.dump_every_min and time.perf_counter() >= next_dump and p.poll() is None:
            next_dump += args.dump_every_min * 60
            try:
                stacks.append({"minute": round((time.perf_counter() - t0) / 60, 1), "stack": _py_spy_dump(p.pid)})
            except Exception as e:  # noqa: BLE001
                stacks.append({"minute": round((time.perf_counter() - t0) / 60, 1), "error": str(e)})
    timed_out = p.poll() is None
    if timed_out:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    wall = time.perf_counter() - t0
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the reaped prune process (the only child so far)
    log.close()
    prog = json.loads((work / "progress.json").read_text()) if (work / "progress.json").exists() else {}
    phase_at = {ph["phase"]: ph["at"] for ph in prog.get("phases", [])}
    res["prune_wall_seconds"] = wall
    res["prune_cpu_seconds"] = ru.ru_utime + ru.ru_stime  # < wall when other jobs share the 2 cores
    res["stack_samples"] = stacks
    res["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for k in ("params_before", "decoder_linear_before", "trace_seconds", "group_building_seconds", "pruning_seconds",
              "params_after", "decoder_linear_after", "fraction_decoder_linear_removed", "config_after", "linear_shapes",
              "groups_pruned"):
        if k in prog:
            res[k] = prog[k]
    if timed_out:
        last = prog.get("phases", [{}])[-1]
        res["status"] = "timeout"
        res["message"] = (f"killed after {args.timeout_min} min in phase '{last.get('phase')}' "
                          f"(BasePruner construction = dependency tracing + group enumeration)")
        if "build_pruner" in phase_at:
            res["group_building_seconds_at_kill"] = time.time() - phase_at["build_pruner"]
            res["group_building_finished"] = "step" in phase_at
    elif p.returncode != 0 or "done" not in phase_at:
        res["status"] = "error"
        res["message"] = (work / "prune.log").read_text()[-1500:]
    else:
        e = subprocess.run([sys.executable, str(Path(__file__).resolve()), "eval", "--work", str(work), "--threads", "1"],
                           capture_output=True, text=True, env=env, cwd=str(ROOT))
        line = next((l for l in e.stdout.splitlines() if l.startswith("EVAL ")), None)
        if line:
            res["status"] = "ok"
            res.update(json.loads(line[5:]))
            res["eval"] = (f"WikiText-2 raw test, first {EVAL_WINDOWS[128]} windows at L=128 and {EVAL_WINDOWS[512]} "
                           "at L=512 (fxprune.data.evaluation_windows + fxprune.calibration.Engine().perplexity)")
        else:
            res["status"] = "error"
            res["message"] = "evaluation failed: " + e.stderr[-1500:]
    res["prune_log_tail"] = (work / "prune.log").read_text()[-1500:]
    _update_results("run", res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("adaptations", "stack_samples", "prune_log_tail")}, indent=1))


def _inner(stage, args, marker, key, timeout):
    plan, _ = _common()
    cmd = [TP_PY, str(Path(__file__).resolve()), stage, "--ratio", str(plan["pruning_ratio"]), "--threads", "1",
           "--seconds", str(args.seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    line = next((l for l in p.stdout.splitlines() if l.startswith(marker)), None)
    out = json.loads(line[len(marker):]) if line else {"error": p.stderr[-1500:]}
    out["command"] = " ".join([sys.executable, *sys.argv])
    _update_results(key, out)
    print(json.dumps(out, indent=1)[:5000])
    if p.stderr:
        print(p.stderr[-4000:], file=sys.stderr)


def summarize(_args):
    """A short summary drawn from the recorded run / profile / diagnose entries."""
    d = json.loads(OUT_JSON.read_text())
    run_, prof, diag = d.get("run", {}), d.get("profile", {}), d.get("diagnose", {})
    s = {"status": run_.get("status"), "timeout_minutes": run_.get("timeout_minutes"),
         "trace_seconds": run_.get("trace_seconds"),
         "group_building_seconds": run_.get("group_building_seconds", run_.get("group_building_seconds_at_kill")),
         "group_building_finished": run_.get("group_building_finished", "group_building_seconds" in run_),
         "pruning_seconds": run_.get("pruning_seconds"), "ppl_L128": run_.get("ppl_L128"), "ppl_L512": run_.get("ppl_L512"),
         "fraction_decoder_linear_removed": run_.get("fraction_decoder_linear_removed"),
         "planned_fraction_decoder_linear_removed": run_.get("budget", {}).get("fraction")}
    if prof.get("top_tottime"):
        tot = prof["profiled_seconds"]
        top = prof["top_tottime"][0]
        s["profile"] = (f"{top['function']}: {top['tottime']:.1f} s of {tot:.1f} s profiled "
                        f"({100 * top['tottime'] / tot:.1f}%), {top['calls']} calls")
    st = (diag or {}).get("stuck_group")
    if st:
        root_node = next((v for k, v in st["nodes"].items() if st["root"] + " " in k), None)
        s["diagnose"] = {"groups_finished_before": [g["root"] for g in diag["groups_finished"]],
                         "stuck_group_root": st["root"], "seconds_observed": st["seconds_in_group"],
                         "group_len_last_sample": st["growth"][-1]["group_len"] if st["growth"] else None}
        if root_node:
            s["diagnose"]["root_visits"] = root_node["visits"]
            s["diagnose"]["root_index_list_latest_[len,min,max]"] = root_node["index_lists"][-1]
    s["where_the_time_goes"] = (
        "BasePruner.__init__ -> DependencyGraph.get_all_groups -> get_pruning_group: the dependency walk "
        "(_fix_dependency_graph_non_recursive) for the first attention group (v_proj of the last layer; the FFN "
        "groups before it take < 0.2 s) never terminates. The walk stops only when it meets a node already in the "
        "group with the same pruning function and the SAME index list (Group.has_pruning_op, a linear scan of "
        "the group). The k branch's RoPE rotate_half (torch.cat((-x2, x1), -1) after SliceBackward0) is recorded "
        "as _ConcatOp with offsets [0, 192, 384] (k_proj's 3 heads x 64 as channels); going around the cycle "
        "k -> rotate_half cat -> mul/add -> SDPA (treated as element-wise, coupling q/k/v) -> v, the concat mapping "
        "adds 192 to every index and nothing on the way back filters indices beyond the layer's width, so the "
        "root v_proj (192 outputs) is re-added with indices 192..383, 384..575, ... without end. Each round adds "
        "~30 items; has_pruning_op scans the whole group, so the cost grows quadratically (~98% of the time in "
        "has_pruning_op). The time-out is a non-terminating loop, not a slow finish.")
    _update_results("summary", s)
    print(json.dumps(s, indent=1))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="stage", required=True)
    r = sub.add_parser("run")
    r.add_argument("--timeout-min", type=float, default=60)
    r.add_argument("--dump-every-min", type=float, default=10, help="py-spy stack sample of the pruning process")
    r.add_argument("--work", default=str(WORK))
    for name in ("profile", "diagnose"):
        s = sub.add_parser(name)
        s.add_argument("--seconds", type=int, default=180 if name == "profile" else 40)
    pr = sub.add_parser("prune")
    pr.add_argument("--out", required=True)
    for name in ("prune", "_profile", "_diagnose"):
        s = pr if name == "prune" else sub.add_parser(name)
        s.add_argument("--ratio", type=float, required=True)
        s.add_argument("--threads", type=int, default=1)
        if name != "prune":
            s.add_argument("--seconds", type=int, default=180)
    ev = sub.add_parser("eval")
    ev.add_argument("--work", default=str(WORK))
    ev.add_argument("--threads", type=int, default=1)
    sub.add_parser("plan")
    sub.add_parser("summarize")
    args = ap.parse_args()
    if args.stage == "run":
        run(args)
    elif args.stage == "profile":
        _inner("_profile", args, "PROFILE ", "profile", args.seconds + 300)
    elif args.stage == "diagnose":
        _inner("_diagnose", args, "DIAG ", "diagnose", args.seconds + 300)
    elif args.stage == "prune":
        stage_prune(args)
    elif args.stage == "_profile":
        stage_profile_inner(args)
    elif args.stage == "_diagnose":
        stage_diagnose_inner(args)
    elif args.stage == "eval":
        stage_eval(args)
    elif args.stage == "summarize":
        summarize(args)
    elif args.stage == "plan":
        print(json.dumps(choose_ratio(), indent=1))


if __name__ == "__main__":
    main()
