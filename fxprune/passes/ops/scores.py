"""Score every unit of the groups of each block from that block's statistics (read-only)."""
from __future__ import annotations

from ...calibration.runner import BlockOp
from ..consumers import stats_request


class ScoreBlocks(BlockOp):
    name, modifies = "score_blocks", False

    def __init__(self, model, analysis, by_block: dict, criterion):
        self.model, self.analysis, self.by_block, self.crit = model, analysis, by_block, criterion
        self.scores: dict = {}

    def active(self, index):
        return index in self.by_block

    def request(self, ctx):
        groups = [self.analysis.group(g) for g in self.by_block[ctx.index]]
        return stats_request(groups, self.crit.needs, self.crit.needs_heads, self.crit.producer_needs)

    def apply(self, ctx, stats):
        for gid in self.by_block[ctx.index]:
            self.scores[gid] = self.crit.score(self.analysis.group(gid), self.model, stats)
