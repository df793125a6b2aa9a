"""Magnitude pruning: drop the smallest ``|W|``; no calibration, no update."""
from __future__ import annotations

from dataclasses import dataclass

from ..masks import select
from . import Pruned, register


@dataclass(frozen=True)
class MagnitudeConfig:
    """Keep the largest ``|W|`` (per layer for unstructured ``granularity='layer'``, else per row / group)."""

    needs_calibration = False


@register("magnitude", MagnitudeConfig)
def prune_magnitude(W, stats, pattern, cfg: MagnitudeConfig) -> Pruned:
    mask = select(W.abs(), pattern)
    return Pruned(W.masked_fill(mask, 0), mask)
