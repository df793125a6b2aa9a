"""Olica's linear calibration, block by block: ``CaptureForLinCal`` records each FFN's inputs and
dense outputs before its units are removed; ``FitLinCal`` afterwards fits the pruned FFN's residual
(``olica/lincal.py``). Candidates are collected; the ``InsertLinearCalibration`` pass inserts the
best-predicted ones once every block is done.
"""
from __future__ import annotations

import torch

from ...calibration.runner import BlockOp
from ...errors import RecipeError
from ..olica import lincal as _lincal
from .capture import capture_io


class CaptureForLinCal(BlockOp):
    name, modifies, needs_data = "capture_for_lincal", False, True

    def __init__(self, model, analysis, by_block: dict):
        self.model, self.analysis, self.by_block = model, analysis, by_block

    def active(self, index):
        return index in self.by_block

    def apply(self, ctx, stats):
        names = sorted({self.analysis.group(g).module for g in self.by_block[ctx.index]})
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


class FitLinCal(BlockOp):
    name, modifies, needs_data = "fit_lincal", False, True

    def __init__(self, by_block: dict, rank: int, alpha: float):
        self.by_block, self.rank, self.alpha = by_block, rank, alpha
        self.candidates: list = []

    def active(self, index):
        return index in self.by_block

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
