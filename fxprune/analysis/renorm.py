"""Whole-width norms: the channels a norm module takes its statistic over can still be pruned.

A norm module that reduces over the channels of a group (``q_norm``/``k_norm`` over a whole q/k
projection, a sub-norm over the attention output or the FFN's intermediate channels, a gated norm
over an SSM's inner channels) couples every channel to every other one through its statistic
(mean of squares, variance...). fxprune does not refuse those groups; it defines what pruning them
means:

    **after pruning, the norm's statistic is taken over the kept channels only**, and its weight
    (and bias) keep the entries of the kept channels.

That is exactly what the sliced model computes by itself (the norm runs on the narrower tensor).
Like removing the channels themselves, it is a change of the model, judged by the same quality
measures; with nothing removed it is the dense model, bit for bit.

The masking reference (``surgery.apply_mask``) must compute the same thing: ``mask_renorms`` hooks
every such norm module so that its output on the kept channels is the module run on the kept
channels only (every tensor argument and every per-channel parameter sliced), and zero on the
removed channels (which the masking drops downstream anyway). Slicing then equals masking exactly.

Scope (anything else keeps the block, with the reason it always had, ``reduced by <op> @ <module>``):

* the op (``norm_module``): a mean/sum/variance/norm reduction, or a fused ``aten.layer_norm`` /
  ``aten.rms_norm``, over the **last** dim only, run inside a module whose class name says it is a
  norm (``...Norm...``, ``nn.LayerNorm`` included: surgery resizes its ``normalized_shape``); loops
  and per-head reshapes inside the module are fine (the hook re-runs the module's own forward);
* the group (``lifts``): its kind is one of ``RENORM_KINDS`` and its members include the weight of
  every such norm over the whole reduced dim (so slicing narrows it; a weightless norm is fine; a
  norm over groups of channels is not: its group size would change). Value channels are excluded: surgery narrows them by
  padding zeros back, which the statistic would see; the residual stream is not a depth-2 group.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SurgeryError
from ..kinds import Kind

RENORM_KINDS = frozenset({Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV, Kind.FFN, Kind.MOE_FFN,
                          Kind.SSM, Kind.SSM_HEADS})
# reductions that compute a norm's statistic (not max/argmax/any: those select, they do not average)
STATISTICS = frozenset({"aten.mean", "aten.sum", "aten.var", "aten.std", "aten.var_mean", "aten.norm",
                        "aten.linalg_vector_norm"})


def norm_module(ctx, reduced: set, statistic: bool = False) -> str | None:
    """The path of the norm module ``ctx``'s op computes a statistic for, or None: the op is a
    statistic (``STATISTICS``; ``statistic=True``: a fused norm op, ``aten.layer_norm``/``rms_norm``)
    over the last dim only, inside a module whose class name contains 'norm' (case-insensitive)."""
    from .context import packet_name
    r = ctx.rank(ctx.tid(ctx.arg(0)))
    if not (statistic or packet_name(ctx.node.target) in STATISTICS) or reduced != {r - 1} or not ctx.module:
        return None
    stack = ctx.node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    cls = list(stack.values())[-1][1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", getattr(cls, "__name__", ""))
    return ctx.module if "norm" in str(name).rsplit(".", 1)[-1].lower() else None


def lifts(kind: str, renorm: dict, members, params: set) -> bool:
    """Whether a group of ``kind`` with ``members`` may renormalise over its kept channels in every
    norm module of ``renorm`` (module -> (reason, reduced dim, its size)); ``params``: every
    parameter name of the model. A norm with a weight must have it among the members, over the
    whole reduced dim (a norm over groups of channels, Mamba-2's gated norm with several groups,
    would change its group size: not lifted)."""
    if kind not in RENORM_KINDS:
        return False
    for mod, (_, _, size) in renorm.items():
        w = f"{mod}.weight"
        if w in params and not any(m.param == w and m.total == size for m in members):
            return False
    return True


def dim_keep(dim_groups: dict, key, plan: dict) -> torch.Tensor | None:
    """The boolean keep mask of one traced tensor dim (``Analysis.dim_groups`` key) under ``plan``
    (id -> kept units): the row-major product of its factors' keeps, segment after segment."""
    rows = dim_groups.get(key)
    if rows is None:
        return None
    parts = []
    for _, _, row in rows:
        m = torch.ones(1, dtype=torch.bool)
        for size, gid in row:
            k = torch.ones(size, dtype=torch.bool)
            if gid in plan:
                k[:] = False
                k[torch.as_tensor(list(plan[gid]), dtype=torch.long)] = True
            m = (m[:, None] & k[None, :]).flatten()
        parts.append(m)
    return torch.cat(parts)


class _KeptChannels:
    """Forward hook: the module's output on the kept channels is the module run on them only."""

    def __init__(self, path: str, keep: torch.Tensor):
        self.path, self.n = path, keep.numel()
        self.idx = torch.nonzero(keep).flatten()
        self.active = False

    def _cut(self, t, idx):
        if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.n:
            return t.index_select(-1, idx)
        return t

    def __call__(self, mod, args, kwargs, output):
        if self.active:  # the re-run below
            return None
        if not isinstance(output, torch.Tensor) or output.shape[-1] != self.n:
            raise SurgeryError(f"norm module {self.path}: its output {tuple(getattr(output, 'shape', ()))} "
                               f"does not end in the {self.n} channels it normalises; cannot mask "
                               "pruning through it")
        idx = self.idx.to(output.device)
        state = {k: v.index_select(0, idx) for k, v in [*mod.named_parameters(recurse=False),
                                                         *mod.named_buffers(recurse=False)]
                 if v is not None and v.dim() == 1 and v.shape[0] == self.n}
        shape = getattr(mod, "normalized_shape", None)  # nn.LayerNorm / nn.RMSNorm: the width is an attribute
        self.active = True
        try:
            if isinstance(shape, tuple) and shape and shape[-1] == self.n:
                mod.normalized_shape = (*shape[:-1], len(idx))
            kept = torch.func.functional_call(mod, state, tuple(self._cut(a, idx) for a in args),
                                              {k: self._cut(v, idx) for k, v in kwargs.items()})
        finally:
            self.active = False
            if isinstance(shape, tuple):
                mod.normalized_shape = shape
        full = torch.zeros_like(output)
        full[..., idx] = kept.to(full.dtype)
        return full


def mask_renorms(model: nn.Module, analysis, plan: dict) -> list:
    """Hook every norm module a planned group renormalises (``detail["renorm"]``) so that the
    masked model computes what slicing computes. ``plan``: id -> kept units. Returns the hook
    handles."""
    groups = analysis.by_id()
    mods = {}
    for gid in plan:
        for mod, key in groups[gid].detail.get("renorm", {}).items():
            mods[mod] = tuple(key)
    handles = []
    for path, key in sorted(mods.items()):
        keep = dim_keep(analysis.dim_groups, key, plan)
        if keep is None:
            raise SurgeryError(f"norm module {path}: the dim it reduces ({key}) is not traced; cannot mask "
                               "pruning through it")
        if bool(keep.all()):
            continue
        hook = _KeptChannels(path, keep)
        handles.append(model.get_submodule(path).register_forward_hook(hook, with_kwargs=True))
    return handles
