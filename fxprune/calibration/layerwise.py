"""Layer-wise calibration: run the model's blocks one at a time over the calibration batches.

``calibrate_layerwise`` captures the inputs of block 0 for every batch (a pre-hook that stops the
forward, so the embedding runs once and nothing after block 0 does), then for block i: attaches the
observers requested for modules inside block i, runs the block over all batches, optionally sums
the statistics across data-parallel ranks (``reduce``), hands them to ``on_block(i, block, stats,
ctx)``, and feeds the block's outputs to block i+1. Peak memory is one block's activations plus the
hidden states of the calibration set (n × L × d), independent of depth.

Streams
- ``Stream.DENSE``: block i+1 sees the outputs of the *unmodified* block i (computed before
  ``on_block`` runs), so statistics equal those of one whole-model pass.
- ``Stream.PRUNED``: block i+1 sees the outputs of block i *after* ``on_block`` modified it (errors
  of earlier pruning are visible to later solves). A dense stream is carried alongside, and
  ``ctx.dense_inputs``/``ctx.dense_targets`` give the dense model's inputs and outputs of block i, the
  usual reconstruction target.

``calibrate_whole`` gathers the same statistics with one ordinary forward per batch (the reference).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import AnalysisError
from .blocks import BlockInput, BlockList, block_output, capture_block_inputs, find_blocks
from .observers import Statistics, StatsCollector, StatsRequest

Batch = dict  # model keyword arguments: input_ids [b, L], optional attention_mask [b, L]
Reduce = Callable[[torch.Tensor], torch.Tensor]


class Stream(enum.Enum):
    DENSE = "dense"
    PRUNED = "pruned"


@dataclass
class BlockContext:
    """What ``on_block`` may use besides the block and its statistics."""

    index: int
    name: str
    inputs: list[BlockInput]                       # the stream this block sees
    dense_inputs: list[BlockInput] | None = None    # PRUNED stream only
    dense_targets: list[torch.Tensor] | None = None  # dense block outputs on dense inputs (PRUNED only)
    extras: dict = field(default_factory=dict)


OnBlock = Callable[[int, torch.nn.Module, Statistics, BlockContext], None]


def forward_kwargs(model: torch.nn.Module, batch: Batch) -> dict:
    """Keyword arguments for ``model``: the batch plus ``use_cache=False`` where the model has a cache."""
    kw = dict(batch)
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kw["use_cache"] = False
    return kw


def token_mask(batch: Batch) -> torch.Tensor | None:
    m = batch.get("attention_mask")
    return None if m is None else m.bool()


def _progress(it, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, leave=False, disable=not enabled)


@torch.no_grad()
def calibrate_whole(model: torch.nn.Module, batches: Sequence[Batch], request: StatsRequest,
                    reduce: Reduce | None = None, progress: bool = True) -> Statistics:
    """Statistics from one plain forward of the whole model per batch."""
    with StatsCollector(model, request) as col:
        for batch in _progress(batches, "calibrate (whole model)", progress):
            col.set_token_mask(token_mask(batch), tuple(batch["input_ids"].shape[:2]))
            model(**forward_kwargs(model, batch))
    if reduce is not None:
        col.reduce(reduce)
    return col.result()


def _names_by_block(blocks: BlockList, request: StatsRequest) -> list[list[str]]:
    per_block: list[list[str]] = [[] for _ in range(len(blocks))]
    outside = []
    for name in request.modules:
        for i in range(len(blocks)):
            q = blocks.qualified(i)
            if name == q or name.startswith(q + "."):
                per_block[i].append(name)
                break
        else:
            outside.append(name)
    if outside:
        raise AnalysisError(f"layer-wise calibration can only observe modules inside {blocks.name!r}; "
                            f"outside: {outside}")
    return per_block


def _run(block: torch.nn.Module, inputs: Sequence[BlockInput]) -> list[torch.Tensor]:
    return [block_output(block(*inp.args, **inp.kwargs)) for inp in inputs]


@torch.no_grad()
def calibrate_layerwise(model: torch.nn.Module, batches: Sequence[Batch], request: StatsRequest, *,
                        on_block: OnBlock | None = None, stream: Stream = Stream.DENSE,
                        reduce: Reduce | None = None, blocks: BlockList | None = None,
                        keep_stats: bool = True, progress: bool = True,
                        dense_targets: bool = True) -> Statistics:
    """Statistics of every requested module, gathered block by block (see the module docstring).

    ``reduce`` (a sum all-reduce) is applied to each block's sums before ``on_block`` sees them.
    ``keep_stats=False`` drops each block's statistics after ``on_block`` (a pass that solves block
    by block then never holds more than one block's Gram matrices; the result is empty).
    ``dense_targets=False`` (PRUNED stream only) skips the dense stream: one block forward fewer per
    block when ``on_block`` needs no dense targets (LIAR, FLAP bias).
    """
    blocks = blocks or find_blocks(model)
    per_block = _names_by_block(blocks, request)
    masks = [token_mask(b) for b in batches]
    shapes = [tuple(b["input_ids"].shape[:2]) for b in batches]
    inputs = [capture_block_inputs(model, blocks.blocks[0], forward_kwargs(model, b))
              for b in _progress(batches, "capture block-0 inputs", progress)]
    dense_inputs = inputs
    results: dict = {}
    for i in _progress(range(len(blocks)), "calibrate blocks", progress):
        block = blocks.blocks[i]
        with StatsCollector(model, request, names=per_block[i]) as col:
            outs = []
            for inp, mask, shape in zip(inputs, masks, shapes):
                col.set_token_mask(mask, shape)
                outs.append(block_output(block(*inp.args, **inp.kwargs)))
        if reduce is not None:
            col.reduce(reduce)
        stats = col.result()
        if keep_stats:
            results.update(stats)
        ctx = BlockContext(i, blocks.qualified(i), inputs)
        track_dense = stream is Stream.PRUNED and dense_targets
        if track_dense:
            dense_outs = outs if dense_inputs is inputs else _run(block, dense_inputs)
            ctx.dense_inputs, ctx.dense_targets = dense_inputs, dense_outs
        if on_block is not None:
            on_block(i, block, stats, ctx)
        if stream is Stream.PRUNED:
            if on_block is not None:
                outs = _run(block, inputs)  # the (possibly modified) block on the pruned stream
            if track_dense:
                dense_inputs = [d.with_hidden(o) for d, o in zip(dense_inputs, dense_outs)]
        inputs = [inp.with_hidden(o) for inp, o in zip(inputs, outs)]
        if stream is Stream.PRUNED and on_block is None:
            dense_inputs = inputs
        del stats, col, ctx
    return Statistics(results)
