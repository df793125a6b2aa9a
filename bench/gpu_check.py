"""GPU check of the layer-wise method stack: the same recipe on CPU fp32, CUDA fp32 and CUDA bf16.

    PYTHONPATH=$PWD python3 bench/gpu_check.py --out bench/results/gpu_check.json

Tiny random LLaMA (3 blocks, GQA) and GPT-2 (Conv1D) models, random calibration windows; the recipe is
``goa`` scores + ``liar_block`` with ``refit_scope: stream`` and ``measured`` allocation (probes, fold,
block refit and the stream refit all run through Lightning Fabric on the engine's device). What it
checks: CUDA fp32 (TF32 off) gives the CPU's pruned weights and logits to float tolerance; bf16-true runs
and keeps the pruned model's output finite and near the fp32 one. Mechanism only: random weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    args = ap.parse_args()
    from fxprune.calibration import Engine
    from fxprune.calibration.engine import EngineConfig
    from fxprune.models.tiny import tiny_model
    from fxprune.pipeline import prune_model
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    recipe = {"criterion": "goa", "reconstruction": "liar_block", "refit_scope": "stream", "allocation": "measured",
              "target": 0.3, "kinds": ["ffn"], "channel_multiple": 4, "calib_samples": 16, "calib_seq_len": 32,
              "probe_samples": 4}
    ids = torch.randint(5, 128, (16, 32), generator=torch.Generator().manual_seed(1))
    test = torch.randint(5, 128, (4, 32), generator=torch.Generator().manual_seed(2))
    out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "torch": torch.__version__, "runs": []}
    for family, kw in (("llama", {"num_hidden_layers": 3}), ("gpt2", {"n_layer": 3})):
        dense = tiny_model(family, **kw)
        got = {}
        for acc, prec in (("cpu", "32-true"), ("cuda", "32-true"), ("cuda", "bf16-true")):
            eng = Engine(EngineConfig(accelerator=acc, precision=prec))
            m = eng.prepare(copy.deepcopy(dense))  # the library's contract: the model on the engine's device
            t0 = time.perf_counter()
            try:
                res = prune_model(m, recipe, ids, eng)
            except Exception as e:  # every configuration is tried: one run shows every failure
                import traceback
                out["runs"].append({"family": family, "accelerator": acc, "precision": prec,
                                    "error": f"{type(e).__name__}: {e}"[-600:],
                                    "where": traceback.format_exc()[-1500:]})
                continue
            secs = time.perf_counter() - t0
            m = m.float().cpu()
            with torch.no_grad():
                logits = m(input_ids=test).logits.double()
            got[(acc, prec)] = (m, logits)
            out["runs"].append({"family": family, "accelerator": acc, "precision": prec, "seconds": round(secs, 2),
                                "params_after": res.report["params_after"],
                                "finite": bool(torch.isfinite(logits).all())})
        if ("cpu", "32-true") not in got:
            continue
        ref_m, ref = got[("cpu", "32-true")]
        for key in (("cuda", "32-true"), ("cuda", "bf16-true")):
            if key not in got:
                continue
            m, lg = got[key]
            pairs = [(p, q) for p, q in zip(m.parameters(), ref_m.parameters()) if p.shape == q.shape]
            wdiff = max(float((p - q).abs().max() / q.abs().max().clamp_min(1e-12)) for p, q in pairs)
            wabs = max(float((p - q).abs().max()) for p, q in pairs)  # a near-zero bias makes the relative one large
            same_shapes = all(p.shape == q.shape for p, q in zip(m.parameters(), ref_m.parameters()))
            out["runs"].append({"family": family, "compare": f"{key[0]} {key[1]} vs cpu 32-true",
                                "same_shapes": same_shapes, "max_rel_weight_diff": wdiff, "max_abs_weight_diff": wabs,
                                "max_abs_logit_diff": float((lg - ref).abs().max()),
                                "logit_scale": float(ref.abs().max())})
    print(json.dumps(out, indent=1))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    ok = all(r.get("finite", True) and "error" not in r for r in out["runs"])
    fp32 = [r for r in out["runs"] if r.get("compare", "").startswith("cuda 32-true")]
    ok = ok and len(fp32) == 2 and all(r["same_shapes"] and r["max_abs_logit_diff"] < 1e-3 * max(1.0, r["logit_scale"]) for r in fp32)
    print("OK" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
