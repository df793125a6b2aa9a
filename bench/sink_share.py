"""Benchmark: how much of each consumer's input Gram comes from the first token of a window.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/sink_share.py [--samples 32]

SmolLM2-135M (``bench/results/tmp/smollm2-fp32``, made by ``bench/structured.py``), C4 calibration windows
(the structured recipes' source, 128 tokens, seed 0), dense model. For every ``o_proj`` / ``down_proj`` it
records ``sum over windows of ||x_0||^2 / sum over all tokens of ||x_t||^2``: the share of the input Gram's
trace (what LIAR's least squares and the ridge ``alpha * mean(diag G)`` see) that the first token, the
attention sink, carries. Writes ``bench/results/sink_share.md`` / ``.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from structured import MODEL_DIR, prepare_model
    from fxprune.data import calibration_windows, tokenizer_for
    from fxprune.loading import load_model
    from fxprune.recipe import load_recipe
    prepare_model()
    m = load_model(str(MODEL_DIR))
    rec = load_recipe({"calibration": {"source": "c4", "samples": args.samples, "seq_len": args.seq_len, "seed": 0},
                       "steps": [{"structured": {"criterion": "goa", "reconstruction": "liar", "target": 0.2}}]})
    ids = calibration_windows(tokenizer_for(m), rec.calibration).ids
    acc: dict[str, list[float]] = {}

    def hook(name):
        def h(mod, a):
            e = a[0].double().pow(2).sum(-1)  # [batch, tokens]
            s = acc.setdefault(name, [0.0, 0.0])
            s[0] += float(e[:, 0].sum())
            s[1] += float(e.sum())
        return h

    hs = [mod.register_forward_pre_hook(hook(n)) for n, mod in m.model.named_modules()
          if n.endswith(("down_proj", "o_proj"))]
    with torch.no_grad():
        for i in range(0, len(ids), 8):
            m.model(input_ids=ids[i:i + 8])
    for h in hs:
        h.remove()
    share = {n: f / t for n, (f, t) in acc.items()}
    cmd = "PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/sink_share.py " + " ".join(argv or sys.argv[1:])
    (RESULTS / "sink_share.json").write_text(json.dumps({"command": cmd, "windows": list(ids.shape), "share": share},
                                                         indent=1))
    layers = sorted({int(n.split(".")[2]) for n in share})
    lines = ["# Share of the input Gram's trace carried by each window's first token (SmolLM2-135M, dense)", "",
             f"Command: `{cmd.strip()}`. C4 train head, {ids.shape[0]} windows x {ids.shape[1]} tokens, seed 0. "
             f"A uniform share would be 1/{ids.shape[1]} = {1 / ids.shape[1]:.4f}.", "",
             "| block | o_proj | down_proj |", "|---|---|---|"]
    for i in layers:
        o, d = share[f"model.layers.{i}.self_attn.o_proj"], share[f"model.layers.{i}.mlp.down_proj"]
        lines.append(f"| {i} | {o:.3f} | {d:.3f} |")
    (RESULTS / "sink_share.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
