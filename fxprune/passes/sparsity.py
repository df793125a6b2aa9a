"""The passes of a sparsity step (``steps/sparsity.py``).

Planning (the dry run): select_linears.   Applying: sparsify_blocks.
"""
from __future__ import annotations

from collections import defaultdict

from torch import nn

from ..calibration import find_blocks
from ..report import sparsity_totals
from ..sparsity.masks import MaskError, check_pattern
from .base import StepPass
from .blockwise import BlockwisePass
from .ops import Sparsify


class SelectLinears(StepPass):
    """Every ``nn.Linear`` inside the model's repeated blocks that the step's layer selection takes,
    with its pattern, or the reason it cannot take it (e.g. ``d_in`` not a multiple of M)."""

    name, ensures = "select_linears", ("linears",)

    def run(self, ctx):
        blocks = find_blocks(ctx.model)
        chosen, skipped = {}, 0
        for i in range(len(blocks)):
            prefix = blocks.qualified(i)
            for n, m in blocks.blocks[i].named_modules():
                name = f"{prefix}.{n}" if n else prefix
                if not isinstance(m, nn.Linear) or not self.step.layers.selected(name):
                    continue
                pattern = self.step.layers.pattern_for(name, self.step.pattern)
                try:
                    check_pattern(pattern, tuple(m.weight.shape))
                    chosen[name] = (i, pattern)
                except MaskError as e:
                    chosen[name] = (i, str(e))
                    skipped += 1
        ctx.facts["linears"] = chosen
        return {"method": self.step.kind, "pattern": self.step.pattern.label, "layers": len(chosen),
                "skipped": skipped}


class SparsifyBlocks(BlockwisePass):
    name, requires, ensures = "sparsify_blocks", ("linears",), ("sparsity_layers",)

    def ops(self, ctx):
        by_block = defaultdict(list)
        for name, (i, pattern) in ctx["linears"].items():
            by_block[i].append((name, pattern))
        return [Sparsify(ctx.model, dict(by_block), self.step.method)]

    def finish(self, ctx, ops):
        layers = ops[0].reports
        ctx.facts["sparsity_layers"] = layers
        return {"method": self.step.kind, **sparsity_totals(layers)}
