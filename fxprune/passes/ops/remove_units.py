"""Remove the planned units of a block's groups, folding them into the kept ones first.

With a plan (group id -> kept units) the units are given; with widths only (group id -> kept count)
they are chosen here from the criterion's scores on this block's statistics (the pruned stream: one
calibration pass instead of two). The reconstructor folds every consumer's removed columns into the
kept ones and the bias (LIAR: least squares; FLAP: the mean), then surgery slices the units away.
Leaves ``ctx.scratch["removed"]``: the consumer layers and their keep masks.
"""
from __future__ import annotations

from ...surgery import _keep_masks, prune
from ..allocate import top_units
from ..consumers import consumers, stats_request
from ..reconstruct import ConsumerLayer
from .base import GroupsOp


def consumer_layers(model, analysis, sub: dict) -> list:
    """``(ConsumerLayer, keep mask)`` of every consumer of the groups in ``sub`` (group id -> kept)."""
    masks = _keep_masks(analysis, sub)
    out, seen = [], set()
    for gid in sub:
        for c in consumers(analysis.group(gid)):
            key = (c.member.param, c.member.dim)
            if key in seen:
                continue
            seen.add(key)
            out.append((ConsumerLayer.of(model, c), masks[key]))
    return out


class RemoveUnits(GroupsOp):
    name = "remove_units"
    resumable = True  # record: the units kept in this block's groups

    def record(self, index):
        return [[g, self.final_plan[g]] for g in self.by_block.get(index, ()) if g in self.final_plan]

    def replay(self, index, record):
        self.final_plan.update({g: list(units) for g, units in record or ()})

    def __init__(self, model, analysis, by_block: dict, kept: dict, plan: dict | None, criterion,
                 reconstructor, damping: float):
        super().__init__(model, analysis, by_block)
        self.kept, self.plan, self.crit, self.rec, self.damping = kept, plan, criterion, reconstructor, damping
        self.final_plan: dict = {}

    def request(self, ctx):
        groups = self.groups(ctx.index)
        if self.plan is None:  # scored here
            return stats_request(groups, self.rec.needs | self.crit.needs, self.crit.needs_heads,
                                 self.crit.producer_needs)
        return stats_request(groups, self.rec.needs)

    def apply(self, ctx, stats):
        a, gids = self.analysis, self.by_block[ctx.index]
        if self.plan is None:
            sub = {g: top_units(self.crit.score(a.group(g), self.model, stats), self.kept[g]) for g in gids}
        else:
            sub = {g: self.plan[g] for g in gids}
        self.final_plan.update(sub)
        layers = consumer_layers(self.model, a, sub)
        ctx.scratch["removed"] = layers
        last_use = {layer.name: k for k, (layer, _) in enumerate(layers)}
        for k, (layer, keep) in enumerate(layers):  # each consumer's statistics go after its last fold
            self.rec.fold(layer, keep, stats, self.damping, release=ctx.owns_stats and last_use[layer.name] == k)
        prune(self.model, sub, a, verify=False)
