"""Dry run: prune a meta-device copy of the model and run its forward, to confirm what the traced
width equations promise (a size taken from another tensor's shape, say, is invisible to them).

The copy shares no memory with the model (parameters and buffers become meta tensors through the
deepcopy memo); slicing and the solved attributes are applied to it and the forward runs on the
path ``torch.export`` takes. A model whose *unpruned* meta forward already fails (data-dependent
code such as ``.item()``) cannot be dry-run: the check is then skipped, not failed.
"""
from __future__ import annotations

import copy
import os
import traceback

import torch
from torch import nn

from ..capture import capture_mode, example_inputs
from .slicing import keep_masks, slice_parameters
from .widths import _export_flags, apply_values


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the meta device."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo.setdefault(id(b), b.detach().to("meta"))
    return copy.deepcopy(model, memo)


def meta_forward(model: nn.Module, inputs: dict) -> str:
    """'' if ``model`` runs on meta ``inputs`` along the export path, else the error."""
    try:
        with torch.no_grad(), capture_mode(model), _export_flags():
            model(**inputs)
    except Exception as e:  # any failure is the answer
        where = ""
        for frame in traceback.extract_tb(e.__traceback__):
            if os.sep + "torch" + os.sep not in frame.filename and "fxprune" not in frame.filename:
                where = f" at {os.path.basename(frame.filename)}:{frame.lineno}"
        msg = str(e).splitlines()[0][:240] if str(e) else ""
        return f"{type(e).__name__}{where}: {msg}"
    return ""


class DryRun:
    """Dry runs of plans on one model (baseline checked once)."""

    def __init__(self, model: nn.Module, groups: dict, dim_groups: dict, trace):
        self.model, self.groups, self.dim_groups, self.trace = model, groups, dim_groups, trace
        inputs = example_inputs(model)
        self.inputs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        self._available = None

    @property
    def available(self) -> bool:
        """Whether the unpruned model runs on the meta device (checked once, when first needed)."""
        if self._available is None:
            self._available = not meta_forward(meta_copy(self.model), self.inputs)
        return self._available

    def error(self, plan: dict) -> str:
        """Why the model pruned by ``plan`` would not run ('' if it does, or if unavailable)."""
        if not plan:
            return ""
        err = self._run(plan)
        return err if err and self.available else ""

    def _run(self, plan: dict) -> str:
        new, problems = self.trace.solve(self.dim_groups, plan)
        if problems:
            return problems[0]
        m = meta_copy(self.model)
        try:
            touched = slice_parameters(m, keep_masks(self.groups, plan))
            apply_values(m, new)
            _sync_norm_shapes(m, touched)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return meta_forward(m, self.inputs)


def _sync_norm_shapes(model: nn.Module, touched: set) -> None:
    """torch's norm modules keep their width in ``normalized_shape``: match it to the sliced weight
    (what surgery's ``models.base.sync_standard_module`` does; ``analysis`` does not import
    ``models``)."""
    for name in touched:
        mod = model.get_submodule(name) if name else model
        w = getattr(mod, "weight", None)
        if isinstance(mod, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) and w is not None:
            mod.normalized_shape = tuple(w.shape)


def probe_plan(g) -> list[int] | None:
    """Keep all units of ``g`` but one (respecting its minimum and width multiple), or None."""
    lo, mult = int(g.detail.get("min_keep", 1)), int(g.detail.get("multiple", 1))
    k = (g.units - 1) // mult * mult
    if k < max(lo, 1):
        return None
    drop = g.units // 2
    return [u for u in range(g.units) if u != drop][:k] if k == g.units - 1 else list(range(k))
