"""Kernel-level harness for the multiple-removal solver (issue 17): real SmolLM2 layer Hessians, no
whole-model runs while iterating.

    # once: one calibration run (C4 head, N x 512 tokens, seed 0) through the library with
    # Wanda (cheapest calibrated method) deciding the pruned stream; the weights and Gram matrices of
    # the chosen blocks' linears go to bench/results/tmp/hessians/ (gitignored)
    PYTHONPATH=$PWD python bench/mrp_kernel.py dump --samples 128 --blocks 0 10 20 29

    # time kernels on the dumped layers, interleaved, repeated; medians, spread and ratios
    PYTHONPATH=$PWD python bench/mrp_kernel.py time --patterns 2:4 4:8 0.5 0.6 --methods sparsegpt mrp --reps 3

    # each solver's gap to the float64 optimum of the damped layer loss, and its CPU time
    PYTHONPATH=$PWD python bench/mrp_kernel.py exactness --patterns 2:4 0.5 --tols 1e-5 1e-6 1e-7

    # cProfile one kernel on one layer
    PYTHONPATH=$PWD python bench/mrp_kernel.py profile --method mrp --pattern 2:4 --layer model.layers.10.mlp.down_proj
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fxprune.sparsity.config import parse_pattern  # noqa: E402
from fxprune.sparsity.masks import mask_conforms  # noqa: E402
from fxprune.sparsity.methods import LayerStats, MRPConfig, SparseGPTConfig, WandaConfig, prune_weight  # noqa: E402

DUMP = Path(__file__).parent / "results" / "tmp" / "hessians"


def dump(args):
    """One calibration run through the library (``fxprune.sparsify`` with Wanda 2:4 deciding the pruned
    stream); each chosen block's linears' weights and input Gram matrices are saved as the block-wise
    runner hands them to the kernel (equal Gram matrices of q/k/v and gate/up are stored once)."""
    import fxprune
    from sparsity_data import calibration_windows
    from fxprune.data import resolve
    from fxprune.passes.ops import sparsify as op
    torch.set_num_threads(args.threads)
    lm = fxprune.load("smollm2")
    calib = torch.cat(calibration_windows(resolve("c4"), lm.tokenizer, args.samples, 512, seed=0))
    DUMP.mkdir(parents=True, exist_ok=True)
    real = op.prune_weight
    grams: list[tuple[torch.Tensor, str]] = []
    index = {}

    def tap(W, st, pattern, cfg):
        blk = int(st.name.split(".")[2])
        if blk in args.blocks:
            owner = next((n for g, n in grams if torch.equal(g, st.gram)), None)
            if owner is None:
                owner = st.name
                grams.append((st.gram.clone(), owner))
                torch.save({"gram": st.gram.clone(), "n": st.n}, DUMP / f"{owner}.gram.pt")
            torch.save(W.detach().clone(), DUMP / f"{st.name}.W.pt")
            index[st.name] = owner
            (DUMP / "index.json").write_text(json.dumps({"samples": args.samples, "layers": index}, indent=1))
            print(st.name, f"{time.time() - t:.0f}s", flush=True)
        if blk >= max(args.blocks) and st.name.endswith("down_proj"):
            raise KeyboardInterrupt  # nothing after the last dumped block is needed
        return real(W, st, pattern, cfg)

    op.prune_weight = tap
    t = time.time()
    try:
        fxprune.sparsify(lm.model, "wanda", "2:4", calib)
    except KeyboardInterrupt:
        pass
    finally:
        op.prune_weight = real
    print(f"dumped {len(index)} layers to {DUMP} in {time.time() - t:.0f}s")


def fixup(args):
    """Rewrite the weights and index of a dump made before the dump recorded layer names (the first
    version keyed files by the shared accumulator's name, so k/v and up overwrote q's and gate's W):
    the dense weights come from the model (a block's weights are untouched until its turn)."""
    from fxprune.loading import load_model
    model = load_model("smollm2").model
    idx = json.loads((DUMP / "index.json").read_text())
    blocks = sorted({int(n.split(".")[2]) for n in idx["layers"]})
    share = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}
    layers = {}
    for b in blocks:
        for sub, lin in (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
                         ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")):
            name = f"model.layers.{b}.{sub}.{lin}"
            torch.save(model.get_submodule(name).weight.detach().clone(), DUMP / f"{name}.W.pt")
            layers[name] = f"model.layers.{b}.{sub}.{share.get(lin, lin)}"
    idx["layers"] = layers
    (DUMP / "index.json").write_text(json.dumps(idx, indent=1))
    print(f"rewrote {len(layers)} layers")


def load_layers(names=None):
    """``(name, W, stats)`` of the dumped layers, one ``LayerStats`` per layer as the block-wise runner
    gives them (linears of one input get equal Gram matrices in distinct tensors)."""
    idx = json.loads((DUMP / "index.json").read_text())["layers"]
    out, grams = [], {}
    for name, gname in idx.items():
        if names and not any(s in name for s in names):
            continue
        if gname not in grams:
            grams[gname] = torch.load(DUMP / f"{gname}.gram.pt")
        g = grams[gname]
        out.append((name, torch.load(DUMP / f"{name}.W.pt"), LayerStats(name, g["gram"].clone(), g["n"])))
    return out


def reference_kernel(rev: str):
    """``prune_mrp`` as of git revision ``rev`` (e.g. ``9368745``, before issue 17), loaded as a side
    module (not registered); imports of modules the method layer moved are redirected."""
    import subprocess
    import types
    src = subprocess.run(["git", "show", f"{rev}:fxprune/sparsity/methods/mrp.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    src = src.replace('@register("mrp", MRPConfig)', "")
    # revisions before the method layer (issue 11): the modules it moved
    src = src.replace("from ..config import NM, MRPConfig, Unstructured",
                      "from ..config import NM, Unstructured\nfrom .mrp import MRPConfig")
    src = src.replace("from ..hessian import dead_channels, robust_cholesky",
                      "from ...linalg import dead_channels, robust_cholesky")
    mod = types.ModuleType(f"fxprune.sparsity.methods._mrp_{rev}")
    mod.__package__ = "fxprune.sparsity.methods"
    exec(compile(src, f"<mrp.py@{rev}>", "exec"), mod.__dict__)
    return mod.prune_mrp


REFS = {}


SETTINGS = {}  # label -> {"module.attr": value}: module constants set while that label runs (experiments)


def run_method(method, W, st, pat, cfg):
    import importlib
    saved = []
    for key, val in SETTINGS.get(method, {}).items():
        mod, attr = key.rsplit(".", 1)
        mod = importlib.import_module(mod)
        saved.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, val)
    try:
        return _run_method(method, W, st, pat, cfg)
    finally:
        for mod, attr, val in saved:
            setattr(mod, attr, val)


def _run_method(method, W, st, pat, cfg):
    method = method.split("#")[0]  # mrp#label: same kernel, other SETTINGS
    if "@" in method:  # mrp@REV: the kernel of another git revision
        rev = method.split("@", 1)[1]
        if rev not in REFS:
            REFS[rev] = reference_kernel(rev)
        return REFS[rev](W, st, pat, cfg)
    return prune_weight(W, st, pat, cfg)


def cfg_for(method, opts):
    label = method
    method = method.split("@")[0].split("#")[0]
    if method == "sparsegpt":
        return SparseGPTConfig()
    if method == "wanda":
        return WandaConfig()
    if method.startswith("mrp"):
        return MRPConfig(**opts.get(label, opts.get(method, {})))  # options by full label (mrp#direct), else base
    raise SystemExit(f"unknown method {method}")


GRAN = {"sparsegpt": "layer", "wanda": "row"}


def pattern_for(method, spec):
    p = parse_pattern(float(spec) if ":" not in spec else spec)
    if hasattr(p, "granularity"):
        p = type(p)(p.ratio, GRAN.get(method, "row"))
    return p


def layer_loss(W, new, stats):
    D = (W.double() - new.double())
    return float(((D @ stats.gram) * D).sum() / stats.n)


def time_kernels(args):
    torch.set_num_threads(args.threads)
    layers = load_layers(args.layers)
    opts = json.loads(args.options)
    SETTINGS.update(json.loads(args.settings))
    rows = []
    for spec in args.patterns:
        for rep in range(args.reps):
            for method in (args.methods if rep % 2 == 0 else list(reversed(args.methods))):  # interleaved
                pat = pattern_for(method.split("=")[0], spec)
                cfg = cfg_for(method, opts)
                tot, cpu, loss = 0.0, 0.0, 0.0
                per = {}
                for name, W, st in layers:
                    t, c = time.perf_counter(), time.process_time()
                    res = run_method(method, W, st, pat, cfg)
                    dt, dc = time.perf_counter() - t, time.process_time() - c
                    assert mask_conforms(res.mask, pat), (method, name)
                    tot += dt
                    cpu += dc
                    per[name] = {"wall": dt, "cpu": dc}
                    loss += layer_loss(W, res.weight, st)
                rows.append({"pattern": spec, "method": method, "rep": rep, "seconds": tot, "cpu_seconds": cpu,
                             "loss": loss, "per_layer": per})
                print(f"{spec:>4} {method:>12} rep{rep}: wall {tot:7.2f}s cpu {cpu:7.2f}s  sum layer loss {loss:.8g}",
                      flush=True)
    summary = []
    for spec in args.patterns:
        base = [r for r in rows if r["pattern"] == spec and r["method"] == args.methods[0]]
        for method in args.methods:
            rs = [r for r in rows if r["pattern"] == spec and r["method"] == method]
            ratios = [r["cpu_seconds"] / b["cpu_seconds"] for r, b in zip(rs, base)]
            wratios = [r["seconds"] / b["seconds"] for r, b in zip(rs, base)]
            s = {"pattern": spec, "method": method,
                 "cpu_median_s": statistics.median(r["cpu_seconds"] for r in rs),
                 "cpu_min_s": min(r["cpu_seconds"] for r in rs), "cpu_max_s": max(r["cpu_seconds"] for r in rs),
                 "wall_median_s": statistics.median(r["seconds"] for r in rs),
                 f"cpu_ratio_vs_{args.methods[0]}_median": statistics.median(ratios),
                 "cpu_ratio_min": min(ratios), "cpu_ratio_max": max(ratios),
                 "wall_ratio_median": statistics.median(wratios), "loss": rs[-1]["loss"]}
            summary.append(s)
            print(json.dumps(s), flush=True)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps({"command": " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__,
                                   "layers": [n for n, _, _ in layers], "summary": summary, "runs": rows}, indent=1))


def profile(args):
    torch.set_num_threads(args.threads)
    layers = load_layers(args.layers)
    opts = json.loads(args.options)
    SETTINGS.update(json.loads(args.settings))
    pat = pattern_for(args.method.split("=")[0], args.pattern)
    cfg = cfg_for(args.method, opts)
    prof = cProfile.Profile(time.process_time)  # CPU time: the shared machine deschedules us often
    t = time.process_time()
    prof.enable()
    for name, W, st in layers:
        run_method(args.method, W, st, pat, cfg)
    prof.disable()
    print(f"total {time.process_time() - t:.2f} CPU s over {len(layers)} layers")
    pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)


PRIMS = {  # primitive -> substrings of cProfile function names (tottime summed)
    "Cholesky factorisations": ["linalg_cholesky_ex"],
    "triangular solves": ["solve_triangular", "cholesky_solve", "linalg_solve>"],
    "gathers (index_select / gather / fancy indexing + identity padding)":
        ["index_select", "method 'gather'", "built-in method torch.gather", "_gather_square", "torch.where"],
}


def breakdown(args):
    """Per kernel and pattern: CPU seconds by phase (setup, mask search, exact solve) and by primitive,
    from cProfile with a CPU-time clock, over the chosen layers."""
    torch.set_num_threads(args.threads)
    layers = load_layers(args.layers)
    SETTINGS.update(json.loads(args.settings))
    table = []
    for spec in args.patterns:
        for method in args.methods:
            pat = pattern_for(method.split("@")[0].split("#")[0], spec)
            cfg = cfg_for(method, {})
            prof = cProfile.Profile(time.process_time)
            c = time.process_time()
            prof.enable()
            for name, W, st in layers:
                run_method(method, W, st, pat, cfg)
            prof.disable()
            total = time.process_time() - c
            st_ = pstats.Stats(prof).stats
            cum = lambda fn: sum(v[3] for k, v in st_.items() if k[2] == fn)  # noqa: E731

            def cum_from(fn, caller):
                t = 0.0
                for k, v in st_.items():
                    if k[2] == fn:
                        t += sum(cv[3] for ck, cv in v[4].items() if ck[2] == caller)
                return t
            mask = cum("adaptive_mask") + cum("oneshot_mask")
            upd = cum_from("optimal_update", "prune_mrp")
            row = {"pattern": spec, "method": method, "total_cpu_s": total, "mask_search_s": mask, "exact_solve_s": upd,
                   "setup_and_rest_s": total - mask - upd}
            named = 0.0
            for prim, keys in PRIMS.items():
                t = sum(v[2] for k, v in st_.items() if any(x in f"{k[2]}" or x in str(k) for x in keys))
                row[prim] = t
                named += t
            row["other (matrix products, elementwise, Python)"] = total - named
            table.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "layers": [n for n, _, _ in layers],
                                              "torch": torch.__version__, "rows": table}, indent=1))


def exactness(args):
    """How close each solver gets to the exact optimum of the damped layer loss: per layer, the float64
    direct solve is the reference ``L*``; the float32 direct solve and the pcg solve at each tolerance
    report their relative gap ``L/L* - 1`` and CPU seconds (same mask: the sweep's, computed once)."""
    from fxprune.linalg import masked_pcg
    from fxprune.sparsity.methods import mrp as M
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.patterns:
        pat = pattern_for("mrp", spec)
        for name, W, st in load_layers(args.layers):
            W = W.float()
            M._factor_cache.clear()
            dead, Hd, Hinv, U = M._factors(st, 0.01, torch.float32)
            W0 = W.clone()
            W0[:, dead] = 0
            mask, swept = M.adaptive_mask(W0, U, pat, 128)
            H64 = Hd.double()

            def loss(X):
                E = X.double() - W0.double()
                return 0.5 * float(((E @ H64) * E).sum())
            ref = loss(M.optimal_update(W0.double(), H64, mask))
            c = time.process_time()
            d32 = M.optimal_update(W0, Hd, mask, Hinv=Hinv)
            row = {"pattern": spec, "layer": name, "loss_float64": ref,
                   "direct_float32": {"gap": loss(d32) / ref - 1, "cpu_s": time.process_time() - c}}
            for tol in args.tols:
                c = time.process_time()
                X, conv = masked_pcg(Hd, Hinv, W0 @ Hd, ~mask, swept, tol, 200)
                t = time.process_time() - c
                X[mask] = 0
                row[f"pcg_{tol:g}"] = {"gap": loss(X) / ref - 1, "cpu_s": t, "converged": int(conv.sum()),
                                       "rows": len(conv)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "torch": torch.__version__,
                                              "rows": rows}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--samples", type=int, default=128)
    d.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29])
    d.add_argument("--threads", type=int, default=1)
    sub.add_parser("fixup")
    for name in ("time", "profile", "breakdown", "exactness"):
        p = sub.add_parser(name)
        p.add_argument("--layers", nargs="*", help="substrings of layer names (default: all dumped)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--options", default="{}", help='JSON {method_label: MRPConfig kwargs}, e.g. {"mrp": {"blocksize": 64}}')
        p.add_argument("--settings", default="{}", help='JSON {method_label: {"module.CONST": value}}, e.g. '
                       '{"mrp#noanchor": {"fxprune.sparsity.methods.mrp._MAX_ANCHORS": 0}}')
    t = sub.choices["time"]
    t.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "0.5", "0.6"])
    t.add_argument("--methods", nargs="+", default=["sparsegpt", "mrp"])
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--out")
    b = sub.choices["breakdown"]
    b.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "0.5", "0.6"])
    b.add_argument("--methods", nargs="+", default=["mrp@main", "mrp", "sparsegpt"])
    b.add_argument("--out")
    e = sub.choices["exactness"]
    e.add_argument("--patterns", nargs="+", default=["2:4", "0.5"])
    e.add_argument("--tols", type=float, nargs="+", default=[1e-5, 1e-6, 1e-7])
    e.add_argument("--out")
    p = sub.choices["profile"]
    p.add_argument("--method", default="mrp")
    p.add_argument("--pattern", default="2:4")
    p.add_argument("--sort", default="cumulative")
    p.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    {"dump": dump, "fixup": fixup, "time": time_kernels, "profile": profile, "breakdown": breakdown,
     "exactness": exactness}[args.cmd](args)


if __name__ == "__main__":
    main()
