"""Mixture-of-experts groups, for every criterion.

* ``moe_experts`` (whole experts): how often the router chose each expert on the calibration data
  (``Stat.ROUTED`` on the router module), ties broken by the expert's weight norm. An expert that is
  never routed to scores 0 and is the first to go, its router row with it.
* ``moe_ffn_channels`` (the same channel of every expert): weight magnitude of the channel's rows
  and columns over all experts. Per-expert activation statistics are not gathered (each expert sees
  only its routed tokens), so data-aware criteria fall back to this data-free score for this kind.

``Criterion`` (``criteria/__init__.py``) routes these kinds here before a criterion's own ``score``.
The ``routing`` criterion is the same scorer by name.
"""
from __future__ import annotations

import torch

from ...calibration.observers import Stat
from ...kinds import Kind
from ..consumers import per_unit
from . import Criterion, register


def weight_norm(group, model) -> torch.Tensor:
    """L2 norm of every unit's slices of all (producer/consumer/expert) members."""
    total = torch.zeros(group.units, dtype=torch.float64)
    for m in group.members:
        if m.role not in ("producer", "consumer", "expert"):
            continue
        p = model.get_parameter(m.param).detach().double()
        sq = p.pow(2).sum(dim=[d for d in range(p.dim()) if d != m.dim]) if p.dim() > 1 else p.pow(2)
        total += per_unit(sq, m, group.units)
    return total.sqrt()


def router_module(group) -> str:
    w = next(m for m in group.members if m.role == "producer" and m.param.endswith("weight"))
    return w.param.rsplit(".", 1)[0]


def score_experts(group, model, stats) -> torch.Tensor:
    """Routing counts (+ a weight-norm tie-break below one count)."""
    norm = weight_norm(group, model)
    tie = norm / (norm.max() + 1e-12) * 0.5
    st = stats.get(router_module(group)) if stats is not None else None
    routed = getattr(st, "routed", None) if st is not None else None
    if routed is None:
        return tie
    if routed.dim() == 2:  # top-k of logits counted for k = 1..8
        k = min(int(group.detail.get("top_k", 1)), routed.shape[0])
        routed = routed[k - 1]
    return routed.double()[: group.units] + tie


def score_group(criterion, group, model, stats) -> torch.Tensor:
    """The score of ``group`` under ``criterion`` (mixture-of-experts kinds handled here)."""
    if group.kind == Kind.MOE_EXPERTS:
        return score_experts(group, model, stats)
    if group.kind == Kind.MOE_FFN:
        return weight_norm(group, model)
    return None


@register
class Routing(Criterion):
    """Experts by routing counts; other kinds by weight magnitude."""

    name = "routing"
    producer_needs = frozenset({Stat.ROUTED})

    def score(self, group, model, stats):
        return weight_norm(group, model)
