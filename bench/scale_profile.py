"""Issue 15: what an onloaded prune's peak RSS is made of, stage by stage.

    python bench/scale_profile.py /tmp/fxprune-scale/7b-L2 --recipe sparsegpt-2of4 --samples 8 --seq-len 128

Runs ``fxprune prune DIR --onload ...`` in this process (the CLI's ``main``) with a thread sampling the
resident set size (``/proc/self/statm``) every 10 ms, and labels the time by the stage the run is in:
the functions below are wrapped so that entering one sets the label and leaving it restores the
previous one. Prints, per label, the RSS on first entry and the largest RSS sampled while it was
current (over all blocks), plus ``ru_maxrss``; ``--json FILE`` writes the same. Samples are 10 ms apart:
a peak shorter than that can be missed (``ru_maxrss`` cannot).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAGE = os.sysconf("SC_PAGE_SIZE")
_state = {"label": "other (CLI, analysis, planning)"}
_peak: dict[str, int] = {}
_first: dict[str, int] = {}
_order: list[str] = []


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _note(label: str) -> None:
    r = rss()
    if label not in _first:
        _first[label] = r
        _order.append(label)
    _peak[label] = max(_peak.get(label, 0), r)


def _sampler(stop: threading.Event) -> None:
    while not stop.is_set():
        _note(_state["label"])
        time.sleep(0.01)


def labelled(obj, attr: str, label) -> None:
    """Wrap ``obj.attr`` so that calling it sets the stage label (``label`` or ``label(*args)``)."""
    fn = getattr(obj, attr)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        prev = _state["label"]
        _state["label"] = label(*args, **kwargs) if callable(label) else label
        _note(_state["label"])
        try:
            return fn(*args, **kwargs)
        finally:
            _note(_state["label"])
            _state["label"] = prev
    setattr(obj, attr, wrapper)


def spanning(cls, label: str) -> None:
    """Label the time between ``cls.__enter__`` and ``cls.__exit__`` (a ``with`` block)."""
    enter, exit_ = cls.__enter__, cls.__exit__

    def __enter__(self):
        self._profile_prev = _state["label"]
        _state["label"] = label
        _note(label)
        return enter(self)

    def __exit__(self, *exc):
        _note(label)
        _state["label"] = self._profile_prev
        return exit_(self, *exc)
    cls.__enter__, cls.__exit__ = __enter__, __exit__


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def install() -> None:
    from fxprune import onload
    from fxprune.calibration import observers, runner
    from fxprune.passes import ops
    from fxprune.passes.reconstruct import goa, liar
    from fxprune.sparsity import methods
    from fxprune.sparsity.methods import sparsegpt
    labelled(onload.OnloadedModel, "prologue", "prologue (embeddings in)")
    labelled(onload.OnloadedModel, "load", "load block")
    labelled(onload.OnloadedModel, "release", "release block (write if modified)")
    labelled(onload.OnloadedModel, "save", "save (copy untouched tensors)")
    labelled(runner, "capture_block_inputs", "capture block-0 inputs")
    spanning(observers.StatsCollector, "forward + observers (block statistics)")
    labelled(runner, "_run", "forward (next block's inputs)")
    labelled(ops.Sparsify, "apply", "sparsify block")
    labelled(ops.sparsify, "prune_weight", lambda W, st, *a: f"solve {_short(st.name) if st else '?'} (d_in {W.shape[1]})")
    labelled(sparsegpt, "inverse_factor_of", lambda st, *a: f"  SparseGPT inverse factor {_short(st.name)}")
    labelled(methods.LayerStats, "output_error", lambda self, *a: f"output error {_short(self.name)}")
    labelled(ops.ScoreBlocks, "apply", "score units")
    labelled(ops.RemoveUnits, "apply", "remove units (LIAR fold)")
    labelled(liar, "liar_system", lambda G, *a: f"  LIAR system build (d {G.shape[0]})")
    labelled(liar, "_solve", lambda A, *a: f"  LIAR factor + solve (r+1 = {A.shape[0]})")
    labelled(ops.CaptureRefitTargets, "apply", "capture refit targets")
    labelled(ops.Refit, "apply", "GOA refit")
    labelled(goa.RefitAccumulator, "solve_into", lambda self, layer, *a: f"  GOA refit solve {_short(layer.name)}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--recipe", default="sparsegpt-2of4")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", default="/tmp/fxprune-scale/profile-out")
    p.add_argument("--json")
    args = p.parse_args()
    import shutil
    import torch
    torch.set_num_threads(1)
    shutil.rmtree(args.out, ignore_errors=True)
    install()
    _note("after imports")
    stop = threading.Event()
    t = threading.Thread(target=_sampler, args=(stop,), daemon=True)
    t.start()
    from fxprune.cli import main as cli
    t0 = time.perf_counter()
    rc = cli(["--memory-limit", "0", "prune", args.model, "--onload", "--recipe", args.recipe, "--calib", "c4",
              "--calib-samples", str(args.samples), "--calib-seq-len", str(args.seq_len), "--out", args.out])
    stop.set()
    t.join()
    shutil.rmtree(args.out, ignore_errors=True)
    rows = [{"stage": k, "rss_at_entry_gb": round(_first[k] / 2 ** 30, 3), "peak_rss_gb": round(_peak[k] / 2 ** 30, 3)}
            for k in _order]
    res = {"model": args.model, "recipe": args.recipe, "calib": f"c4 {args.samples} x {args.seq_len}", "rc": rc,
           "wall_s": round(time.perf_counter() - t0, 1),
           "ru_maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3), "stages": rows}
    print(f"\n{'stage':60s} {'RSS at entry':>12s} {'peak RSS':>9s}")
    for r in rows:
        print(f"{r['stage']:60s} {r['rss_at_entry_gb']:10.3f} GB {r['peak_rss_gb']:7.3f} GB")
    print(f"ru_maxrss {res['ru_maxrss_gb']} GB, rc {rc}, wall {res['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
