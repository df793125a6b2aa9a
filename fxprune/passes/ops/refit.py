"""GOA step 2: refit each consumer of the removed units on the pruned stream's inputs against the
dense model's outputs (``reconstruct/goa.py``). ``CaptureRefitTargets`` runs before the units are
removed and records, on the dense inputs, what the consumers produce; ``Refit`` runs after.

Under data parallelism each rank holds its shard's inputs and targets: the sums are all-reduced
(``ctx.reduce``) before the solve, so every rank computes the same weights.
"""
from __future__ import annotations

from ..consumers import consumers
from ..reconstruct.goa import RefitAccumulator
from .base import ByBlock, GroupsOp
from .capture import capture_io


class CaptureRefitTargets(GroupsOp):
    name, modifies, needs_dense, reads_stats = "capture_refit_targets", False, True, False
    resumable = True  # keeps nothing across blocks (ctx.scratch only)

    def apply(self, ctx, stats):
        names = list(dict.fromkeys(c.module for g in self.groups(ctx.index) for c in consumers(g)))
        mods = [self.model.get_submodule(n) for n in names]
        outs = capture_io(ctx.block, mods, ctx.dense_inputs)
        ctx.scratch["refit_targets"] = {n: [y for _, y in pairs] for n, pairs in zip(names, outs)}


class Refit(ByBlock):
    name, reads_stats = "goa_refit", False
    resumable = True  # keeps nothing across blocks

    def __init__(self, by_block: dict, damping: float):
        super().__init__(by_block)
        self.damping = damping

    def apply(self, ctx, stats):
        layers = [layer for layer, _ in ctx.scratch["removed"]]
        targets = ctx.scratch.pop("refit_targets")
        ios = capture_io(ctx.block, [l.module for l in layers], ctx.inputs)
        for layer, pairs in zip(layers, ios):
            acc = RefitAccumulator()
            for (x, _), y in zip(pairs, targets[layer.name]):
                acc.add(x, y)
            acc.A, acc.C = ctx.reduce(acc.A), ctx.reduce(acc.C)
            acc.solve_into(layer, self.damping)
