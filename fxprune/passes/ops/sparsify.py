"""Sparsify the selected linear layers of a block with a registered method's kernel
(``sparsity/methods``): every layer of the block sees the block's inputs from the already sparsified
blocks before it (the pruned stream), and all of them are solved from the same statistics. Each
layer's statistics are released once it is solved (when the runner says this op owns them), so a
block's peak holds the Grams not yet used plus one layer's solve, not every Gram of the block."""
from __future__ import annotations

import dataclasses
import time

import torch

from ...calibration import Accumulation, Stat, StatsRequest
from ...report import LayerReport
from ...sparsity.methods import LayerStats, prune_weight
from .base import ByBlock


class Sparsify(ByBlock):
    name = "sparsify"
    resumable = True  # record: this block's layer reports

    def record(self, index):
        names = {n for n, _ in self.by_block.get(index, ())}
        return [dataclasses.asdict(r) for r in self.reports if r.name in names]

    def replay(self, index, record):
        self.reports.extend(LayerReport(**{**r, "shape": tuple(r["shape"])}) for r in record or ())

    def __init__(self, model, by_block: dict, method):
        """``by_block``: block index -> [(layer name, pattern, or a reason it is skipped)]."""
        super().__init__(by_block)
        self.model, self.method = model, method
        self.needs_data = bool(getattr(method, "needs_calibration", True))
        self.reports: list[LayerReport] = []

    def request(self, ctx):
        if not self.needs_data:
            return None
        names = [n for n, p in self.by_block[ctx.index] if not isinstance(p, str)]
        return StatsRequest.for_modules(names, [Stat.INPUT_GRAM], accumulation=Accumulation.MIXED) if names else None

    @torch.no_grad()
    def apply(self, ctx, stats):
        for name, pattern in self.by_block[ctx.index]:
            lin = self.model.get_submodule(name)
            W = lin.weight.data
            if isinstance(pattern, str):
                self.reports.append(LayerReport(name, tuple(W.shape), "skipped: " + pattern, 0, W.numel(), None, 0.0))
                continue
            t0 = time.perf_counter()
            st = LayerStats.of(name, stats[name]) if self.needs_data else None
            new = prune_weight(W.float(), st, pattern, self.method).weight.to(W.dtype)
            err = st.output_error(W.float() - new.float()) if st is not None else None
            lin.weight.data.copy_(new)
            self.reports.append(LayerReport(name, tuple(W.shape), pattern.label, int((lin.weight.data == 0).sum()),
                                            W.numel(), err, time.perf_counter() - t0))
            del st, new
            if ctx.owns_stats:  # this layer's Gram goes before the next layer's solve (shared ones with the last user)
                stats.release(name)
