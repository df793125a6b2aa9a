"""Magnitude pruning: drop the smallest ``|W|``; no calibration, no update."""
from __future__ import annotations

from ..config import MagnitudeConfig
from ..masks import select
from . import Pruned, register


@register("magnitude", MagnitudeConfig)
def prune_magnitude(W, stats, pattern, cfg: MagnitudeConfig) -> Pruned:
    mask = select(W.abs(), pattern)
    return Pruned(W.masked_fill(mask, 0), mask)
