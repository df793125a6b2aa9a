"""Criteria score every unit of a group (higher = keep). One small file per criterion.

Contract: ``needs`` lists the ``Stat``s a criterion reads from each consumer module, ``producer_needs``
those it reads from each producer module (both gathered on the stream the pipeline scores on);
``score(group, model, stats) -> Tensor[units]`` (float64).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

import torch

from ...calibration.observers import Stat
from ...errors import RecipeError

CRITERIA: dict[str, type] = {}


def register(cls):
    CRITERIA[cls.name] = cls
    return cls


class Criterion:
    name: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset()
    producer_needs: ClassVar[frozenset] = frozenset()
    needs_heads: ClassVar[bool] = False  # per-head output Gram on attention consumers

    def score(self, group, model, stats) -> torch.Tensor:
        raise NotImplementedError


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise RecipeError(f"criterion: unknown {name!r}; known: {sorted(CRITERIA)}")
    return CRITERIA[name]()


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CRITERIA", "Criterion", "Stat", "get_criterion", "register"]
