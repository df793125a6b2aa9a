"""Reconstructors compensate a consumer layer for the input channels that pruning removes.

Contract: ``needs`` lists the ``Stat``s read from each consumer module on the *pruned* stream
(layer-wise calibration: block i sees the outputs of the already-pruned blocks before it);
``fold(layer, keep, stats)`` updates the consumer's kept columns and bias in place *before* the
removed columns are sliced away; ``refit`` (optional) runs after surgery on the block.
One small file per reconstructor.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ...calibration.observers import Stat
from ...registry import Registry, import_all
from ..consumers import as_columns

RECONSTRUCTORS = Registry("reconstruction")
register = RECONSTRUCTORS.register


class ConsumerLayer:
    """A consumer module viewed as ``y = W x + b`` with ``W`` (out, in) over the pruned dim."""

    def __init__(self, model: nn.Module, module: str, weight_param: str, dim: int):
        self.module = model.get_submodule(module)
        self.name, self.weight_name, self.dim = module, weight_param, dim

    @classmethod
    def of(cls, model: nn.Module, consumer) -> "ConsumerLayer":
        """The layer of a ``passes.consumers.Consumer``."""
        return cls(model, consumer.module, consumer.member.param, consumer.member.dim)

    @property
    def W(self) -> torch.Tensor:
        return as_columns(self.module.get_parameter(self.weight_name.rsplit(".", 1)[1]), self.dim)

    def bias(self, create: bool = False) -> torch.Tensor | None:
        b = getattr(self.module, "bias", None)
        if b is None and create:
            w = self.W
            b = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
            self.module.bias = b  # LLaMA's o_proj/down_proj have none: add one (saved as structure)
        return b


class Reconstructor:
    name: ClassVar[str] = "none"
    needs: ClassVar[frozenset] = frozenset()
    refits: ClassVar[bool] = False
    refit_target: ClassVar[str] = "consumer"  # with ``refits``: match each consumer's dense output ("consumer")
                                              # or correct the block's output error ("block", ``liar_block.py``)
    default_refit_damping: ClassVar[float | None] = None  # the refit's ridge when the step sets none (else damping)

    def fold(self, layer: ConsumerLayer, keep: torch.Tensor, stats, damping: float, release: bool = False) -> None:
        """Compensate the removed columns (``~keep``) in the kept ones and the bias (in place).
        ``release``: no later reader needs ``stats[layer.name]``: the fold may ``release`` it once read."""


@register
class NoReconstruction(Reconstructor):
    name = "none"


def get_reconstructor(name: str) -> Reconstructor:
    return RECONSTRUCTORS.create(name)


import_all(__name__, __path__)

__all__ = ["ConsumerLayer", "RECONSTRUCTORS", "Reconstructor", "Stat", "get_reconstructor", "register"]
