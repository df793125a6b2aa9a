"""Olica's linear calibration, block by block: ``CaptureForLinCal`` records each FFN's inputs and
dense outputs before its units are removed; ``FitLinCal`` afterwards fits the pruned FFN's residual
(``olica/lincal.py``). Candidates are collected; the ``InsertLinearCalibration`` pass inserts the
best-predicted ones once every block is done.
"""
from __future__ import annotations

import torch

from ...errors import RecipeError
from ..olica import lincal as _lincal
from .base import ByBlock, GroupsOp
from .capture import capture_io


class CaptureForLinCal(GroupsOp):
    name, modifies, reads_stats = "capture_for_lincal", False, False

    def apply(self, ctx, stats):
        names = sorted({g.module for g in self.groups(ctx.index)})
        modules = [self.model.get_submodule(n) for n in names]
        for name, mod in zip(names, modules):
            if mod is ctx.block:
                raise RecipeError(f"linear calibration: the FFN group of {name} is not a submodule of its "
                                  "block (its channels live directly in the block); not supported")
        io = capture_io(ctx.block, modules, ctx.inputs)
        for name, pairs in zip(names, io):
            if any(not isinstance(y, torch.Tensor) or y.shape != x.shape for x, y in pairs):
                raise RecipeError(f"linear calibration: {name} does not map its input to an output "
                                  "of the same shape; not supported")
        ctx.scratch["lincal_io"] = list(zip(names, modules, io))


class FitLinCal(ByBlock):
    name, modifies, reads_stats = "fit_lincal", False, False

    def __init__(self, by_block: dict, rank: int, alpha: float):
        super().__init__(by_block)
        self.rank, self.alpha = rank, alpha
        self.candidates: list = []

    @torch.no_grad()
    def apply(self, ctx, stats):
        for name, mod, pairs in ctx.scratch.pop("lincal_io"):
            acc = _lincal.ResidualFit(pairs[0][0].shape[-1])
            for x, y in pairs:
                acc.add(x, y - mod(x))
            for attr in ("G", "C", "sx", "se", "see"):
                setattr(acc, attr, ctx.reduce(getattr(acc, attr)))
            acc.n = int(ctx.reduce(torch.tensor(float(acc.n))).item())
            self.candidates.append(_lincal.fit(acc, self.rank, self.alpha, module=name))
