"""The ``measure_loss`` pass of a structured step with ``allocation: measured``: every unit scored and
every group's cost curve measured on the calibration loss (``ops/probe.py``), before ``allocate``."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..calibration import find_blocks
from ..calibration.runner import Stream
from ..errors import RecipeError
from ..evaluation.divergence import reference_probs, soft_nll
from ..evaluation.perplexity import perplexity
from .blockwise import BlockwisePass
from .criteria import get_criterion
from .reconstruct import get_reconstructor
from .structured import _by_block


class MeasureLoss(BlockwisePass):
    """``measured`` allocation: scores every unit and measures, group by group, what removing a share of
    its units costs in calibration loss (``ops/probe.py``) on the dense stream. The probe windows are the
    first ``probe_samples`` calibration windows; their loss runs the whole model, so every block must be
    in memory. ``probe_metric: kl`` scores each probe against the dense model's distributions on those
    windows instead of their next tokens (``evaluation/divergence.py``)."""

    name, requires, ensures = "measure_loss", ("groups", "block_of", "analysis"), ("scores", "costs")
    stream = Stream.DENSE

    def windows(self):
        """The first ``allocation_samples`` calibration windows (all when unset): the scores and the
        probes' folds need fewer than the reconstruction, which runs on all of them."""
        n = self.step.allocation_samples
        return self.env.windows if n is None else self.env.windows[:n]

    def ops(self, ctx):
        from ..calibration.runner import block_source, _NO_SOURCE
        from .ops.probe import ProbeLoss
        r = self.step
        if block_source(ctx.model) is not _NO_SOURCE:
            raise RecipeError("allocation 'measured' runs the whole model on its probe windows: it needs every "
                              "block in memory (this model is loaded block by block from disk); use 'global'")
        by_block = _by_block([g.id for g in ctx["groups"]], ctx["block_of"])
        crit = get_criterion(r.criterion)
        prepare = getattr(crit, "prepare", None)  # a criterion with a pass of its own (fisher_obs: gradients)
        if prepare is not None:  # on the dense model, before any probe; the instance that prepared scores
            prepare(ctx.model, self.windows(), ctx["groups"], self.env.batch_size)
        windows = self.env.windows[: r.probe_samples]
        _check_language_model(ctx.model, windows[:1].to(self.env.engine.fabric.device))
        engine, autocast = self.env.engine, probe_autocast(r.probe_precision, self.env.engine)
        shard = torch.stack(engine.shard(list(windows))).to(engine.fabric.device)

        kw = dict(batch_size=self.env.batch_size, autocast=autocast, device=engine.fabric.device)
        if r.probe_metric == "kl":  # the dense model's distributions, once: every probe is scored against them
            reference = reference_probs(ctx.model, shard, **kw)

            def loss(skip=None) -> float:
                with skip or nullcontext():
                    return soft_nll(ctx.model, shard, reference, reduce=engine.reduce_sum, **kw)
        else:
            def loss(skip=None) -> float:
                with skip or nullcontext():
                    res = perplexity(ctx.model, shard, reduce=engine.reduce_sum, progress=False, **kw)
                return res.nll / max(res.tokens, 1)
        # the prefix skip is used on one rank only (with several, every probe runs the whole model)
        blocks = find_blocks(ctx.model) if engine.world_size == 1 else None
        return [ProbeLoss(ctx.model, ctx["analysis"], by_block, crit,
                          get_reconstructor(r.reconstruction), r.damping, r.probe_ratios, r.channel_multiple, loss,
                          blocks, int(shard.shape[0]))]

    def finish(self, ctx, ops):
        from .allocate_pooled import measured_costs
        op = ops[0]
        by_id = {g.id: g for g in ctx["groups"]}
        ctx.facts["scores"] = op.scores
        ctx.facts["costs"] = {gid: measured_costs(c, by_id[gid].units) for gid, c in op.curves.items()}
        return {"probe_windows": min(self.step.probe_samples, int(self.env.windows.shape[0])),
                "allocation_windows": int(self.windows().shape[0]),
                "probe_metric": self.step.probe_metric,
                "probe_loss_dense": round(op.base, 6) if op.base is not None else None,
                "prefix_skipped": op.blocks is not None,
                "prefix_check": None if op.prefix_check is None else float(f"{op.prefix_check:.3g}"),
                "probes": sum(len(c) for c in op.curves.values()),
                "curves": {gid: [[k, round(c, 6)] for k, c in curve] for gid, curve in op.curves.items()}}


def _check_language_model(model, ids) -> None:
    """The probe's loss is next-token NLL: the model must return logits over its vocabulary."""
    from ..calibration.runner import forward_kwargs
    with torch.no_grad():
        out = model(**forward_kwargs(model, {"input_ids": ids}))
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.shape[:2] != ids.shape or logits.shape[-1] <= int(ids.max()):
        raise RecipeError(f"allocation 'measured': {type(model).__name__} returns no next-token logits over its "
                          "vocabulary (not a language model with an LM head); its costs are measured on the "
                          "calibration loss. Use 'global' or 'pooled'")


def probe_autocast(precision: str, engine):
    """The probe forwards' precision: ``32`` (none), ``bf16`` (autocast), or ``auto``: bf16 on CUDA and on
    a CPU that multiplies bf16 in hardware (``cpu_has_native_bf16``), else none."""
    from ..calibration.engine import cpu_has_native_bf16
    device = engine.fabric.device
    bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or
                                                            (device.type == "cpu" and cpu_has_native_bf16())))
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
