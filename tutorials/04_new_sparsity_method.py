"""Tutorial 4: a new sparsity method is one file.

The file holds the method's config type (its recipe options, with their defaults) and its kernel
``prune(W, stats, pattern, cfg)``; ``register(name, Config)`` makes ``name`` a recipe step. The
block-wise runner, calibration statistics, data parallelism, reports and saving come for free.
In the package it would live in ``fxprune/sparsity/methods/<name>.py`` and be picked up automatically.

Here: RIA (Zhang et al., "Plug-and-Play", ICLR 2024), relative importance times activation:
``(|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||^a``, lowest pruned, no weight update.

    .venv/bin/python tutorials/04_new_sparsity_method.py
"""
from dataclasses import dataclass

import torch

import fxprune
from fxprune.models.tiny import tiny_model
from fxprune.sparsity.masks import select
from fxprune.sparsity.methods import Pruned, register


@dataclass(frozen=True)
class RIAConfig:
    """``a``: the exponent of the input norm."""

    a: float = 0.5
    needs_calibration = True


@register("ria", RIAConfig)
def prune_ria(W, stats, pattern, cfg: RIAConfig) -> Pruned:
    aw = W.abs()
    relative = aw / aw.sum(1, keepdim=True).clamp_min(1e-12) + aw / aw.sum(0, keepdim=True).clamp_min(1e-12)
    score = relative * stats.sq_norms.sqrt().to(W.dtype).pow(cfg.a).unsqueeze(0)
    mask = select(score, pattern)
    return Pruned(W.masked_fill(mask, 0), mask)


def main(argv=None):
    model = tiny_model("llama")
    windows = torch.randint(5, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    out = fxprune.prune(model, {"calibration": {"batch_size": 4},
                                "steps": [{"ria": {"sparsity": "2:4", "a": 0.5}}]}, windows)
    summary = out.report["steps"][0]["passes"][-1]
    print(f"ria 2:4: {summary['sparsity_selected_linears']:.0%} zeros in {len(out.report['steps'][0]['layers'])} "
          f"linears; parameters {out.report['params_after']:,} (zeros are kept as dense tensors)")
    assert abs(summary["sparsity_selected_linears"] - 0.5) < 1e-9
    return out


if __name__ == "__main__":
    main()
