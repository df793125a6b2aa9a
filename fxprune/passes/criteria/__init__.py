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
    """Subclasses implement ``score``. Mixture-of-experts groups never reach it: ``moe_experts`` are
    scored by routing counts and ``moe_ffn_channels`` by weight magnitude for every criterion
    (``criteria/experts.py``; the statistics request adds ``Stat.ROUTED`` on their router modules)."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset()
    producer_needs: ClassVar[frozenset] = frozenset()
    needs_heads: ClassVar[bool] = False  # per-head output Gram on attention consumers

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("score")
        if own is not None and not getattr(own, "_moe_aware", False):
            def score(self, group, model, stats, _own=own):
                from .experts import score_group
                got = score_group(self, group, model, stats)
                return _own(self, group, model, stats) if got is None else got
            score._moe_aware = True
            score.__doc__ = own.__doc__
            cls.score = score

    def score(self, group, model, stats) -> torch.Tensor:
        raise NotImplementedError


def get_criterion(name: str) -> Criterion:
    return CRITERIA.create(name)


import_all(__name__, __path__)

__all__ = ["CRITERIA", "Criterion", "Stat", "get_criterion", "register"]
