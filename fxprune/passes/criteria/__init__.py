"""Criteria score every unit of a group (higher = keep). One small file per criterion.

Contract: ``needs`` lists the ``Stat``s a criterion reads from each consumer module, ``producer_needs``
those it reads from each producer module (both gathered on the stream the pipeline scores on);
``score(group, model, stats) -> Tensor[units]`` (float64).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ...calibration.observers import Stat
from ...registry import Registry, import_all

CRITERIA = Registry("criterion")
register = CRITERIA.register


class Criterion:
    name: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset()
    producer_needs: ClassVar[frozenset] = frozenset()
    needs_heads: ClassVar[bool] = False  # per-head output Gram on attention consumers

    def score(self, group, model, stats) -> torch.Tensor:
        raise NotImplementedError


def get_criterion(name: str) -> Criterion:
    return CRITERIA.create(name)


import_all(__name__, __path__)

__all__ = ["CRITERIA", "Criterion", "Stat", "get_criterion", "register"]
