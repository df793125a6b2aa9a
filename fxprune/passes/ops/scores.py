"""Score every unit of the groups of each block from that block's statistics (read-only)."""
from __future__ import annotations

from ..consumers import stats_request
from .base import GroupsOp


class ScoreBlocks(GroupsOp):
    name, modifies = "score_blocks", False

    def __init__(self, model, analysis, by_block: dict, criterion):
        super().__init__(model, analysis, by_block)
        self.crit = criterion
        self.scores: dict = {}

    def request(self, ctx):
        return stats_request(self.groups(ctx.index), self.crit.needs, self.crit.needs_heads, self.crit.producer_needs)

    def apply(self, ctx, stats):
        for g in self.groups(ctx.index):
            self.scores[g.id] = self.crit.score(g, self.model, stats)
