"""A pass that drives the one block-wise runner (``calibration.runner``) with the ``BlockOp`` objects
it builds from its facts, then harvests what they produced."""
from __future__ import annotations

from ..calibration.runner import Stream
from .base import StepPass


class BlockwisePass(StepPass):
    """Subclasses implement ``ops(ctx)`` and ``finish(ctx, ops) -> report``; ``step`` is the step's
    config, ``env`` the run's ``steps.StepEnv`` (windows, engine, batch size)."""

    stream = Stream.PRUNED

    def __init__(self, step, env):
        super().__init__(step)
        self.env = env

    def ops(self, ctx) -> list:
        raise NotImplementedError

    def finish(self, ctx, ops) -> dict:
        raise NotImplementedError

    def windows(self):
        """The calibration windows this pass runs on (all of the run's; a pass may take fewer)."""
        return self.env.windows

    def run(self, ctx):
        ops = self.ops(ctx)
        info = self.env.engine.run_blocks(ctx.model, self.windows(), ops, batch_size=self.env.batch_size,
                                          stream=self.stream, desc=self.name,
                                          exclude_first_token=getattr(self.step, "skip_first_token", False))
        report = self.finish(ctx, ops) or {}
        report.update({"blocks": info.blocks, "calibration_tokens": info.tokens,
                       "block_seconds": [round(s, 3) for s in info.seconds]})
        return report
