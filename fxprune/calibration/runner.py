"""The one block-wise runner: every method that needs calibration data runs its work through it.

A method contributes ``BlockOp``s. ``run_blocks(model, batches, ops)`` captures what enters block 0
for every batch (a pre-hook that stops the forward: the embedding runs once, nothing after block 0
runs, and the LM head never runs), then for each block ``i`` in order:

1. gathers, in one run of the block over all batches, the union of the statistics every op
   requests for this block (observers attached only inside block ``i``), all-reduced across
   data-parallel ranks (``reduce``) before any op sees them;
2. calls every op's ``apply(ctx, stats)`` in the order given (an op may modify the block, or only
   read it; ``ctx.scratch`` passes captures between the ops of one block);
3. feeds the block's outputs to block ``i + 1``.

Streams
- ``Stream.DENSE``: block ``i + 1`` sees the outputs of block ``i`` as it was *before* the ops ran
  (the statistics equal one whole-model pass). Planning passes that only read use this.
- ``Stream.PRUNED``: block ``i + 1`` sees the outputs of block ``i`` *after* its ops (later solves see
  the errors of earlier pruning). If an op sets ``needs_dense``, the dense model's stream is carried
  beside it: ``ctx.dense_inputs`` / ``ctx.dense_targets`` are the unmodified model's inputs and
  outputs of block ``i``.

The run stops after the last block any op works on (``BlockOp.active``). If no op needs data
(e.g. magnitude sparsity), no forward runs at all. Peak memory is one block's activations plus the
calibration set's hidden states (n x L x d), independent of depth.

Weights on disk: a model may carry a ``BlockSource`` (``block_source(model)``; ``fxprune.onload``
attaches one to a meta-device skeleton). The runner then calls ``prologue()`` before capturing the
block-0 inputs and ``end_prologue()`` after, ``load(i)`` before anything touches block ``i`` and
``release(i, modified)`` once its outputs are computed (the source writes a modified block out and
drops its weights). An in-memory model has no source: the hooks are no-ops and the run is unchanged.

Resume: a model may carry a ``fxprune.progress.Progress`` (``progress_of(model)``). The runner then
records each block of a modifying run whose ops are all ``resumable`` (the block's tensors and
structure, the ops' ``record(i)``, the stream entering the next block) and, when the record says
blocks ``0 .. k-1`` are done, restores them (``replay`` gives each op its records back) and continues
at block ``k`` on the saved stream. Without a progress the run is unchanged.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Sequence

import torch

from ..errors import AnalysisError, DataError
from .blocks import BlockInput, BlockList, block_output, capture_block_inputs, find_blocks
from .observers import Statistics, StatsCollector, StatsRequest

Batch = dict  # model keyword arguments: input_ids [b, L], optional attention_mask [b, L]
Reduce = Callable[[torch.Tensor], torch.Tensor]


class Stream(enum.Enum):
    DENSE = "dense"
    PRUNED = "pruned"


class BlockSource:
    """Where the blocks' weights live when they are not all in memory (``fxprune.onload``): hooks the
    runner calls around the capture of block-0 inputs and around each block. The base does nothing."""

    def prologue(self) -> None:
        """Before block-0 inputs are captured: what runs before block 0 (embeddings) in memory."""

    def end_prologue(self) -> None:
        """After the capture: what ``prologue`` read may go."""

    def load(self, index: int) -> None:
        """Block ``index``'s weights in memory (before any op or forward touches the block)."""

    def release(self, index: int, modified: bool) -> None:
        """Done with block ``index`` (its outputs are computed); ``modified``: an op changed it."""


SOURCE_ATTR = "_fxprune_block_source"
_NO_SOURCE = BlockSource()


def block_source(model: torch.nn.Module) -> BlockSource:
    """The ``BlockSource`` attached to ``model`` (attribute ``SOURCE_ATTR``), else the no-op one."""
    return getattr(model, SOURCE_ATTR, None) or _NO_SOURCE


@dataclass
class BlockContext:
    """What an op sees of block ``index`` besides its statistics."""

    index: int
    name: str                                        # qualified module name of the block
    block: torch.nn.Module
    inputs: list[BlockInput]                         # the stream this block sees
    reduce: Reduce                                   # sum across data-parallel ranks (identity on one)
    dense_inputs: list[BlockInput] | None = None     # PRUNED stream with needs_dense only
    dense_targets: list[torch.Tensor] | None = None  # the dense block's outputs on dense inputs
    scratch: dict = field(default_factory=dict)      # shared by the ops of this block, dropped after it
    owns_stats: bool = False                         # True while the block's last op that reads statistics
                                                     # runs: it may ``Statistics.release`` what it is done with
    outputs: list[torch.Tensor] | None = None        # set by a modifying op that knows the block's new outputs
                                                     # on ``inputs`` (the runner then skips recomputing them);
                                                     # any later modifying op that does not set it clears it


class BlockOp:
    """One method's work on a block (subclass it; one small class per kind of work).

    ``request(ctx)``: the statistics to gather on this block's inputs before any op of the block
    runs (``None``: none). ``apply(ctx, stats)``: do the work (modify ``ctx.block`` in place, or read).
    ``active(i)``: whether the op works on block ``i`` at all (the run stops after the last active
    block). The block's statistics are dropped as soon as the last op with ``reads_stats`` has run
    (that op sees ``ctx.owns_stats`` and may release entries itself as it goes); later ops get none. Flags: ``modifies`` (the block changes: its outputs are recomputed for the pruned stream),
    ``needs_data`` (the op requests statistics or reads ``ctx.inputs``; False: data-free), ``needs_dense``
    (the op reads ``ctx.dense_inputs``/``ctx.dense_targets``).

    Resume (``fxprune.progress``): ``resumable`` says that everything the op keeps across blocks is
    given by ``record(i)`` (JSON-able, after ``apply`` on block ``i``; ``None`` if nothing) and put back
    by ``replay(i, record)`` when block ``i`` is restored instead of run. The block itself is restored
    by the runner. An op that is not ``resumable`` makes its run run again in full on resume.
    """

    name: ClassVar[str] = "op"
    modifies: ClassVar[bool] = True
    reads_stats: ClassVar[bool] = True   # False: ``apply`` never reads ``stats`` (the runner drops them sooner)
    needs_data: ClassVar[bool] = True
    needs_dense: ClassVar[bool] = False
    resumable: ClassVar[bool] = False

    def record(self, index: int):
        return None

    def replay(self, index: int, record) -> None:
        pass

    def active(self, index: int) -> bool:
        return True

    def request(self, ctx: BlockContext) -> StatsRequest | None:
        return None

    def apply(self, ctx: BlockContext, stats: Statistics) -> None:
        raise NotImplementedError


class CollectStats(BlockOp):
    """Keep the statistics of ``request`` for every block (read-only)."""

    name, modifies = "collect_stats", False

    def __init__(self, request: StatsRequest, blocks: BlockList):
        self.request_all = request
        self.per_block = _names_by_block(blocks, request)
        self.collected: dict = {}

    def active(self, index):
        return bool(self.per_block[index])

    def request(self, ctx):
        names = self.per_block[ctx.index]
        if not names:
            return None
        r = self.request_all
        return StatsRequest({n: r.modules[n] for n in names}, {n: r.heads[n] for n in names if n in r.heads},
                            r.accumulation, r.exclude_first_token)

    def apply(self, ctx, stats):
        self.collected.update(stats)


def forward_kwargs(model: torch.nn.Module, batch: Batch) -> dict:
    """Keyword arguments for ``model``: the batch plus ``use_cache=False`` where the model has a cache."""
    kw = dict(batch)
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kw["use_cache"] = False
    return kw


def token_mask(batch: Batch) -> torch.Tensor | None:
    m = batch.get("attention_mask")
    return None if m is None else m.bool()


def progress_bar(it, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, leave=False, disable=not enabled)


def _names_by_block(blocks: BlockList, request: StatsRequest) -> list[list[str]]:
    per_block: list[list[str]] = [[] for _ in range(len(blocks))]
    outside = []
    for name in request.modules:
        i = blocks.index_of(name)
        if i is None:
            outside.append(name)
        else:
            per_block[i].append(name)
    if outside:
        raise AnalysisError(f"block-wise calibration can only observe modules inside {blocks.name!r}; "
                            f"outside: {outside}")
    return per_block


def _merge(requests: list[StatsRequest]) -> StatsRequest | None:
    out = None
    for r in requests:
        out = r if out is None else out.merged(r)
    return out


def _run(block: torch.nn.Module, inputs: Sequence[BlockInput]) -> list[torch.Tensor]:
    return [block_output(block(*inp.args, **inp.kwargs)) for inp in inputs]


@dataclass
class RunInfo:
    """What a run did: blocks visited, seconds per block, calibration tokens; ``resumed``: blocks
    restored from a progress record instead of run (they have no entry in ``seconds``)."""

    blocks: int = 0
    seconds: list = field(default_factory=list)
    tokens: int = 0
    resumed: int = 0


def _progress_run(model, source, desc, n_blocks, ops):
    """This run's record in the model's progress (``fxprune.progress``), or None."""
    progress = getattr(model, "_fxprune_progress", None)
    if progress is None:
        return None
    if source is not _NO_SOURCE:
        from ..errors import RecipeError
        raise RecipeError("resume is not supported on an onloaded model (its pruned blocks are streamed to disk)")
    return progress.run(desc, n_blocks, ops)


@torch.no_grad()
def run_blocks(model: torch.nn.Module, batches: Sequence[Batch], ops: Sequence[BlockOp], *,
               stream: Stream = Stream.PRUNED, reduce: Reduce | None = None, blocks: BlockList | None = None,
               progress: bool = True, desc: str = "blocks", exclude_first_token: bool = False) -> RunInfo:
    """Run ``ops`` block by block over ``batches`` (see the module docstring). ``exclude_first_token``:
    each window's first token contributes to no op's statistics (``StatsRequest.exclude_first_token``
    on every merged request; the block still runs on it)."""
    blocks = blocks or find_blocks(model)
    reduce = reduce or (lambda t: t)
    ops = list(ops)
    active = [i for i in range(len(blocks)) if any(op.active(i) for op in ops)]
    info = RunInfo()
    if not active:
        return info
    last = active[-1]
    source = block_source(model)
    record = _progress_run(model, source, desc, len(blocks), ops)
    start = 0
    if record is not None and record.blocks_done:
        record.restore(blocks, ops, model)
        start = info.resumed = info.blocks = record.blocks_done
        record.progress.resumed_blocks += start
    uses_data = any(op.needs_data or op.needs_dense for op in ops)
    if not uses_data:  # data-free methods: no forward at all
        for i in progress_bar([a for a in active if a >= start], desc, progress):
            t0 = time.perf_counter()
            source.load(i)
            ctx = BlockContext(i, blocks.qualified(i), blocks.blocks[i], [], reduce)
            here = [op for op in ops if op.active(i)]
            for op in here:
                op.apply(ctx, Statistics({}))
            source.release(i, any(op.modifies for op in here))
            if record is not None:
                record.commit(i, blocks.blocks[i], ops, model, None, None)
            info.seconds.append(time.perf_counter() - t0)
            info.blocks += 1
        return info
    if start > last:
        return info
    if not batches:
        needy = sorted({op.name for op in ops if op.needs_data or op.needs_dense})
        raise DataError(f"block ops {needy} need calibration data and none was given")
    masks = [token_mask(b) for b in batches]
    shapes = [tuple(b["input_ids"].shape[:2]) for b in batches]
    info.tokens = int(sum(s[0] * s[1] for s in shapes))
    source.prologue()
    try:
        inputs = [capture_block_inputs(model, blocks.blocks[0], forward_kwargs(model, b))
                  for b in progress_bar(batches, "capture block-0 inputs", progress)]
    finally:
        source.end_prologue()
    track_dense = stream is Stream.PRUNED and any(op.needs_dense for op in ops)
    dense_inputs = inputs
    if start:  # resumed: the saved stream entering block ``start``
        hidden, dense = record.stream()
        inputs = [inp.with_hidden(h.to(inp.hidden.device)) for inp, h in zip(inputs, hidden)]
        dense_inputs = inputs if dense is None else [inp.with_hidden(h.to(inp.hidden.device))
                                                     for inp, h in zip(inputs, dense)]
    for i in progress_bar(range(start, last + 1), desc, progress):
        t0 = time.perf_counter()
        source.load(i)
        block = blocks.blocks[i]
        here = [op for op in ops if op.active(i)]
        ctx = BlockContext(i, blocks.qualified(i), block, inputs, reduce)
        request = _merge([r for r in (op.request(ctx) for op in here) if r is not None])
        if request is not None and exclude_first_token:
            request = replace(request, exclude_first_token=True)
        if request is not None:
            with StatsCollector(block, request, prefix=blocks.qualified(i) + ".") as col:
                outs = []
                for inp, mask, shape in zip(inputs, masks, shapes):
                    col.set_token_mask(mask, shape)
                    outs.append(block_output(block(*inp.args, **inp.kwargs)))
            col.reduce(reduce)
            stats = col.result()
            col = None  # the observers' sums now live in ``stats`` only: released with it
        else:
            outs, stats = None, Statistics({})
        if outs is None and i < last and (stream is Stream.DENSE or track_dense):
            outs = _run(block, inputs)  # before any op changes the block
        if track_dense:
            if outs is None:
                outs = _run(block, inputs)
            ctx.dense_inputs = dense_inputs
            ctx.dense_targets = outs if dense_inputs is inputs else _run(block, dense_inputs)
        modified = False
        last_reader = max((k for k, op in enumerate(here) if op.reads_stats), default=-1)
        for k, op in enumerate(here):
            ctx.owns_stats = k == last_reader
            if op.modifies:
                ctx.outputs = None  # only the op that changes the block can say what it now outputs
            op.apply(ctx, stats)
            modified = modified or op.modifies
            if k == last_reader:  # no later op reads them: each layer's Gram goes before the next solves
                stats = Statistics({})
        ctx.owns_stats = False
        if i < last:
            if stream is Stream.PRUNED and modified and ctx.outputs is not None:
                outs = ctx.outputs  # the last modifying op gave them
            elif outs is None or (stream is Stream.PRUNED and modified):
                outs = _run(block, inputs)  # the (possibly modified) block on the current stream
            if track_dense:
                dense_inputs = [d.with_hidden(o) for d, o in zip(dense_inputs, ctx.dense_targets)]
            inputs = [inp.with_hidden(o) for inp, o in zip(inputs, outs)]
        source.release(i, modified)
        if record is not None:
            record.commit(i, block, ops, model, [inp.hidden for inp in inputs] if i < last else None,
                          [d.hidden for d in dense_inputs] if i < last and track_dense else None)
        del stats, ctx, outs
        info.seconds.append(time.perf_counter() - t0)
        info.blocks += 1
    return info
