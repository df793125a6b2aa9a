"""Statistics over calibration batches, block by block (``calibrate_layerwise``) or with one ordinary
forward of the whole model (``calibrate_whole``, the reference the block-wise runner is tested
against; it runs the LM head, so methods never use it).

``calibrate_layerwise`` is the block-wise runner (``runner.run_blocks``) with one op that keeps the
requested statistics and, optionally, a callback ``on_block(i, block, stats, ctx)`` run after each
block's statistics are gathered (and all-reduced): a test and benchmark convenience. Methods
contribute their own ``BlockOp`` objects instead.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .blocks import BlockList, find_blocks
from .observers import Statistics, StatsCollector, StatsRequest
from .runner import (Batch, BlockContext, BlockOp, CollectStats, Reduce, Stream, forward_kwargs, progress_bar,
                     run_blocks, token_mask)

OnBlock = Callable[[int, torch.nn.Module, Statistics, BlockContext], None]

__all__ = ["BlockContext", "OnBlock", "Stream", "calibrate_layerwise", "calibrate_whole", "forward_kwargs",
           "token_mask"]


class _Callback(BlockOp):
    name, needs_data = "on_block", True

    def __init__(self, fn: OnBlock, dense: bool):
        self.fn, self.needs_dense = fn, dense

    def apply(self, ctx, stats):
        self.fn(ctx.index, ctx.block, stats, ctx)


@torch.no_grad()
def calibrate_whole(model: torch.nn.Module, batches: Sequence[Batch], request: StatsRequest,
                    reduce: Reduce | None = None, progress: bool = True) -> Statistics:
    """Statistics from one plain forward of the whole model per batch."""
    with StatsCollector(model, request) as col:
        for batch in progress_bar(batches, "calibrate (whole model)", progress):
            col.set_token_mask(token_mask(batch), tuple(batch["input_ids"].shape[:2]))
            model(**forward_kwargs(model, batch))
    if reduce is not None:
        col.reduce(reduce)
    return col.result()


@torch.no_grad()
def calibrate_layerwise(model: torch.nn.Module, batches: Sequence[Batch], request: StatsRequest, *,
                        on_block: OnBlock | None = None, stream: Stream = Stream.DENSE,
                        reduce: Reduce | None = None, blocks: BlockList | None = None,
                        keep_stats: bool = True, progress: bool = True,
                        dense_targets: bool = True) -> Statistics:
    """Statistics of every requested module, gathered block by block (``runner`` module docstring).

    ``on_block`` runs after each block's (reduced) statistics; under ``Stream.PRUNED`` the next block
    sees the block as ``on_block`` left it, and ``ctx.dense_inputs``/``ctx.dense_targets`` are set
    unless ``dense_targets=False``. ``keep_stats=False`` drops each block's statistics once used.
    """
    blocks = blocks or find_blocks(model)
    collect = CollectStats(request, blocks)
    ops: list[BlockOp] = [collect]
    if on_block is not None:
        ops.append(_Callback(on_block, dense=stream is Stream.PRUNED and dense_targets))
    run_blocks(model, batches, ops, stream=stream, reduce=reduce, blocks=blocks, progress=progress,
               desc="calibrate blocks")
    return Statistics(collect.collected if keep_stats else {})
