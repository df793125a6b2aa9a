"""Registry of sparsification methods: one file per method, registered by its config type.

A method is ``prune(W, stats, pattern, cfg) -> Pruned``: ``W`` is the ``(d_out, d_in)`` weight,
``stats`` the layer's ``HessianAccumulator`` (``None`` for methods that need no calibration),
``pattern`` an ``Unstructured``/``NM`` target. It returns the new weight (zeros where pruned) and the
mask; it never modifies ``W`` in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import MagnitudeConfig, MRPConfig, SparseGPTConfig, WandaConfig


@dataclass
class Pruned:
    weight: torch.Tensor
    mask: torch.Tensor


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


from . import magnitude, wanda, sparsegpt, mrp  # noqa: E402,F401  (registration side effects)

__all__ = ["Pruned", "METHODS", "METHOD_NAMES", "prune_weight", "MagnitudeConfig", "WandaConfig",
           "SparseGPTConfig", "MRPConfig"]
