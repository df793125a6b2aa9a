"""Sparsification methods: one file per method holding its config type and its kernel, registered by
``@register(name, ConfigType)``; a new file here is picked up automatically and becomes a recipe
step of that name (``steps/sparsity.py``).

A kernel is ``prune(W, stats, pattern, cfg) -> Pruned``: ``W`` the ``(d_out, d_in)`` weight,
``stats`` a ``LayerStats`` of the layer's calibration inputs (``None`` for methods whose config has
``needs_calibration = False``), ``pattern`` an ``Unstructured``/``NM`` target. It returns the new
weight (zeros where pruned) and the mask, and never modifies ``W`` in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...registry import import_all


@dataclass
class Pruned:
    weight: torch.Tensor
    mask: torch.Tensor


@dataclass
class LayerStats:
    """One linear layer's calibration inputs: the Gram ``G = sum_t x_t x_t^T`` (fp64) over ``n`` tokens."""

    name: str
    gram: torch.Tensor
    n: int

    @classmethod
    def of(cls, name: str, module_stats) -> "LayerStats":
        """From a ``calibration.ModuleStats`` with an input Gram."""
        return cls(name, module_stats.gram, module_stats.count)

    @property
    def sq_norms(self) -> torch.Tensor:
        """``||X_j||^2`` per input channel (Wanda's statistic)."""
        return torch.diagonal(self.gram).clone()

    def hessian(self, normalise: bool = True, dtype: torch.dtype | None = None, rows: int = 1024) -> torch.Tensor:
        """``H = 2 G`` (``2 G / n`` if ``normalise``; the scale changes no solution), undamped, in the
        Gram's dtype (fp64) or ``dtype``. With ``dtype`` it is computed ``rows`` rows at a time, so no
        full-size fp64 temporary exists (the same bits as ``hessian().to(dtype)``)."""
        from ...linalg import LinAlgError
        if self.n == 0:
            raise LinAlgError(f"layer {self.name}: no calibration tokens reached it")
        div = self.n if normalise else 1
        if dtype is None or dtype == self.gram.dtype:
            return 2.0 * self.gram / div
        out = torch.empty(self.gram.shape, dtype=dtype, device=self.gram.device)
        for a in range(0, self.gram.shape[0], rows):
            out[a:a + rows] = 2.0 * self.gram[a:a + rows] / div
        return out

    def output_error(self, delta: torch.Tensor) -> float:
        """Mean over calibration tokens of ``||delta x||^2`` (``tr(delta G delta^T) / n``)."""
        d = delta.double()
        t = d @ self.gram
        return float(t.mul_(d).sum() / max(self.n, 1))  # in place: one (out x in) fp64 temporary, same bits


METHODS: dict[type, Callable] = {}
METHOD_NAMES: dict[str, type] = {}


def register(name: str, cfg_type: type):
    def deco(fn):
        METHODS[cfg_type] = fn
        METHOD_NAMES[name] = cfg_type
        return fn
    return deco


def prune_weight(W, stats, pattern, cfg) -> Pruned:
    """Dispatch on the type of ``cfg``."""
    try:
        fn = METHODS[type(cfg)]
    except KeyError:
        raise KeyError(f"no sparsification method registered for {type(cfg).__name__}") from None
    return fn(W, stats, pattern, cfg)


import_all(__name__, __path__)

from .magnitude import MagnitudeConfig  # noqa: E402
from .mrp import MRPConfig  # noqa: E402
from .sparsegpt import SparseGPTConfig  # noqa: E402
from .wanda import WandaConfig  # noqa: E402

__all__ = ["LayerStats", "METHODS", "METHOD_NAMES", "MRPConfig", "MagnitudeConfig", "Pruned", "SparseGPTConfig",
           "WandaConfig", "prune_weight", "register"]
