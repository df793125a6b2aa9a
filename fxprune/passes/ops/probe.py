"""Measure what removing units costs in calibration loss, one group at a time (read-only).

For each group of the block, on the block's dense-stream statistics: score the units (the step's
criterion), then for each probe ratio ``r`` remove the ``r`` share of lowest-scored units *the way the
step will* (the reconstructor's fold, the consumers' columns zeroed: masking semantics, which slicing
equals), run ``loss()`` (the step's probe metric of the whole model on the probe windows) and put the
group back bit for bit. The probe of block ``i`` skips the ``i`` blocks before it
(``sensitivity.SkipPrefix``): their outputs on the probe windows are recorded in the dense base's own
whole forward (``blocks x windows x L x hidden`` floats), so a skipped probe differs from a whole one
only where the probe changed the model (checked once). Every other group stays dense, so each curve is
one layer's own cost (EvoPress's per-layer "level" database, measured on the loss instead of searched).

Leaves ``scores`` (group id -> unit scores) and ``curves`` (group id -> [(units removed, loss increase)]).
"""
from __future__ import annotations

from typing import Callable

import torch

from ...analysis.groups import Kind
from ...analysis.renorm import mask_renorms
from ...errors import RecipeError
from ...surgery import zero_consumed
from ..allocate import COUNTED, _multiple, top_units
from ..consumers import stats_request
from ..sensitivity import SkipPrefix
from .base import GroupsOp
from .remove_units import consumer_layers


def probe_counts(units: int, ratios, multiple: int) -> list[int]:
    """Units removed at each probe ratio: rounded so the kept width is a multiple of ``multiple`` (when
    the group is wider than it), at least one unit, at most all but ``multiple``; duplicates dropped."""
    out = []
    for r in ratios:
        kept = units - int(round(r * units))
        if units > multiple:
            kept = max(multiple, int(round(kept / multiple)) * multiple)
        k = min(units - 1, max(1, units - kept))
        if k not in out:
            out.append(k)
    return sorted(out)


class ProbeLoss(GroupsOp):
    name, modifies = "probe_loss", False

    def __init__(self, model, analysis, by_block: dict, criterion, reconstructor, damping: float, ratios,
                 multiple: int, loss: Callable[..., float], blocks=None, probe_rows: int = 0):
        super().__init__(model, analysis, by_block)
        self.crit, self.rec, self.damping = criterion, reconstructor, damping
        self.ratios, self.multiple, self.loss = tuple(ratios), multiple, loss
        self.blocks, self.probe_rows = blocks, probe_rows  # blocks=None: every probe runs the whole model
        self.scores: dict = {}
        self.curves: dict = {}
        self.base: float | None = None        # the dense model's loss (whole forward)
        self.prefix_check: float | None = None  # |skipped - whole| dense loss at the first skipping block
        self.exact = False                       # the check found them equal: one base for every block
        self.like = None                         # a block's output, for the skipped blocks' return shape
        self.hidden: list = []                   # per block, its outputs on the probe windows (dense, whole forward)

    def request(self, ctx):
        return stats_request(self.groups(ctx.index), self.rec.needs | self.crit.needs, self.crit.needs_heads,
                             self.crit.producer_needs)

    def _dense_base(self) -> float:
        """The dense model's loss (whole forward), recording what every block returns on the probe
        windows: block ``i - 1``'s outputs are then block ``i``'s inputs in the very forward whose loss
        is the base, so the probe of block ``i`` can skip the blocks before it without moving the base."""
        if self.blocks is None:
            return self.loss()
        outs: list[list] = [[] for _ in self.blocks.blocks]

        def keep(j):
            def hook(module, args, out):
                if self.like is None:
                    self.like = out
                outs[j].append((out if isinstance(out, torch.Tensor) else out[0]).detach()
                               if isinstance(out, (torch.Tensor, tuple)) else None)
            return hook
        handles = [b.register_forward_hook(keep(j)) for j, b in enumerate(self.blocks.blocks)]
        try:
            base = self.loss()
        finally:
            for h in handles:
                h.remove()
        if not isinstance(self.like, (torch.Tensor, tuple)) or any(o is None for out in outs for o in out) \
                or any(sum(o.shape[0] for o in out) < self.probe_rows for out in outs):
            self.blocks = None  # blocks that return something else, or did not see every probe row
        else:
            self.hidden = [torch.cat(out, 0)[: self.probe_rows] for out in outs]
        return base

    def _skip(self, ctx):
        """The prefix skip for block ``ctx.index`` (None: run the whole model). Checked once against the
        whole forward: equal (to 1e-6), the dense base serves every block; within 1%, each block's base
        is its own skipped forward; further apart, the whole model runs from then on."""
        if self.blocks is None or ctx.index == 0:
            return None
        skip = SkipPrefix(self.blocks.blocks[:ctx.index], self.hidden[ctx.index - 1], self.like)
        if self.prefix_check is None:
            self.prefix_check = abs(self.loss(skip) - self.base)
            scale = max(1.0, abs(self.base))
            self.exact = self.prefix_check <= 1e-6 * scale
            if self.prefix_check > 0.01 * scale:
                self.blocks = None
                return None
        return skip

    def apply(self, ctx, stats):
        if self.base is None:
            self.base = self._dense_base()
        skip = self._skip(ctx)
        base = self.base if skip is None or self.exact else self.loss(skip)  # the same forward the probes take
        for g in self.groups(ctx.index):
            if g.kind == Kind.MOE_EXPERTS:
                raise RecipeError(f"allocation 'measured': group {g.id} (experts) cannot be probed yet; "
                                  "leave 'experts' out of kinds or use 'global'")
            s = self.crit.score(g, self.model, stats)
            self.scores[g.id] = s
            mult = 1 if g.kind in COUNTED else _multiple(g, self.multiple)
            self.curves[g.id] = [(k, self._cost(g, top_units(s, g.units - k), stats, skip) - base)
                                 for k in probe_counts(g.units, self.ratios, mult)]

    def _cost(self, g, keep_units: list[int], stats, skip) -> float:
        """The probe loss with ``g`` keeping ``keep_units`` (folded, masked), then ``g`` put back."""
        sub = {g.id: keep_units}
        layers = consumer_layers(self.model, self.analysis, sub)
        saved = {m.param: self.model.get_parameter(m.param).detach().clone() for m in g.members_by_role("consumer")}
        biases = {layer.name: (None if layer.bias() is None else layer.bias().detach().clone()) for layer, _ in layers}
        handles = []
        try:
            with torch.no_grad():
                for layer, keep in layers:
                    self.rec.fold(layer, keep, stats, self.damping)
                handles = mask_renorms(self.model, self.analysis, sub)
                zero_consumed(self.model, g, torch.as_tensor(keep_units, dtype=torch.long))
            return self.loss(skip)
        finally:
            for h in handles:
                h.remove()
            with torch.no_grad():
                for name, t in saved.items():
                    self.model.get_parameter(name).copy_(t)
                for layer, _ in layers:
                    b = biases[layer.name]
                    if b is None:
                        layer.module.bias = None  # the fold added one: the module had none
                    else:
                        layer.bias().copy_(b)

