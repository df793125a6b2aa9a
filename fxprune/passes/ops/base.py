"""Bases of the block ops that work on some blocks only."""
from __future__ import annotations

from ...calibration.runner import BlockOp


class ByBlock(BlockOp):
    """Active on the blocks that ``by_block`` (block index -> the op's items there) lists."""

    def __init__(self, by_block: dict):
        self.by_block = by_block

    def active(self, index):
        return index in self.by_block


class GroupsOp(ByBlock):
    """Works on prune groups: ``by_block`` maps a block index to the ids of its groups."""

    def __init__(self, model, analysis, by_block: dict):
        super().__init__(by_block)
        self.model, self.analysis = model, analysis

    def groups(self, index) -> list:
        return [self.analysis.group(g) for g in self.by_block[index]]
