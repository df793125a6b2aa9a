"""Wanda (Sun et al., 2023): score ``|W_ij| · ||X_j||₂``, lowest pruned within each output row
(or each group of M for N:M); no weight update."""
from __future__ import annotations

from dataclasses import dataclass

from ..masks import select
from . import Pruned, register


@dataclass(frozen=True)
class WandaConfig:
    """Wanda (Sun et al. 2023): score ``|W_ij| · ||X_j||₂``, compared within each output row; no update."""

    needs_calibration = True


@register("wanda", WandaConfig)
def prune_wanda(W, stats, pattern, cfg: WandaConfig) -> Pruned:
    norms = stats.sq_norms.to(W.dtype).sqrt()
    mask = select(W.abs() * norms.unsqueeze(0), pattern)
    return Pruned(W.masked_fill(mask, 0), mask)
