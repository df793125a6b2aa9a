"""Helpers shared by criteria, reconstructors and block ops: a group's consumer layers seen as
``W (out x in)``, and the statistics request for a set of groups."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.groups import Group, Kind, Member
from ..calibration.observers import Stat


@dataclass(frozen=True)
class Consumer:
    """A consumer member of a group: module path, the parameter, and ``columns()`` = W as (out, in)."""

    member: Member
    module: str

    def param(self, model: nn.Module) -> torch.Tensor:
        return model.get_parameter(self.member.param)

    def columns(self, model: nn.Module) -> torch.Tensor:
        """The weight as (out, in) with the group's channels as columns (a view: writes go through)."""
        return as_columns(self.param(model), self.member.dim)


def as_columns(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``weight`` viewed as (out, in) when its input channels are dim ``dim`` (1: nn.Linear; 0: GPT-2's
    Conv1D, which stores ``W`` transposed). A view: writes go through."""
    return weight if dim == 1 else weight.transpose(0, 1)


def consumers(group: Group) -> list[Consumer]:
    """Weight-matrix consumers of ``group`` (nn.Linear/Conv1D-like, 2-D weights)."""
    return [Consumer(m, m.param.rsplit(".", 1)[0]) for m in group.members
            if m.role == "consumer" and m.param.endswith("weight")]


def per_unit(values: torch.Tensor, member: Member, units: int) -> torch.Tensor:
    """Sum per-channel ``values`` (along ``member.dim``) into per-unit totals."""
    out = torch.zeros(units, dtype=torch.float64)
    if member.total != member.size:  # a segment of a fused projection: its range only
        values = values.narrow(0, member.offset, member.size)
    return out.index_add_(0, member.unit_index(units), values.to(torch.float64).cpu())  # scores live on the CPU


def head_dim_of(group: Group) -> int:
    """Channels per attention head in the consumer: the finest unit stride among its members."""
    return min(m.stride for m in group.members if m.role == "consumer")


def stats_request(groups, stats, heads: bool = False, producer_stats=frozenset()):
    """The statistics a criterion or reconstructor reads for ``groups``: ``stats`` on every consumer
    module, ``producer_stats`` on every producer weight's module, and (``heads``) the per-head output
    Gram on attention consumers. Gram-type sums use mixed accumulation."""
    from ..analysis.groups import ATTENTION_KINDS
    from ..calibration import Accumulation, HeadLayout, StatsRequest
    mods, layouts = defaultdict(set), {}
    for g in groups:
        if g.kind == Kind.MOE_EXPERTS:  # routing counts on the router (criteria/experts.py)
            mods[g.members_by_role("producer")[0].param.rsplit(".", 1)[0]].add(Stat.ROUTED)
        if producer_stats:
            for m in g.members:
                if m.role == "producer" and m.param.endswith("weight"):
                    mods[m.param.rsplit(".", 1)[0]] |= set(producer_stats)
        for c in consumers(g):
            mods[c.module] |= set(stats)
            if heads and g.kind in ATTENTION_KINDS:
                mods[c.module].add(Stat.HEAD_GRAM)
                hd = head_dim_of(g)
                layouts[c.module] = HeadLayout(c.member.size // hd, hd)
    return StatsRequest(mods, heads=layouts, accumulation=Accumulation.MIXED)
