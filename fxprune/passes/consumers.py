"""Helpers shared by criteria and reconstructors: a group's consumer layers seen as ``W (out x in)``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.groups import Group, Member


@dataclass(frozen=True)
class Consumer:
    """A consumer member of a group: module path, the parameter, and ``columns()`` = W as (out, in)."""

    member: Member
    module: str

    def param(self, model: nn.Module) -> torch.Tensor:
        return model.get_parameter(self.member.param)

    def columns(self, model: nn.Module) -> torch.Tensor:
        """The weight as (out, in) with the group's channels as columns (a view: writes go through)."""
        w = self.param(model)
        return w if self.member.dim == 1 else w.transpose(0, 1)


def consumers(group: Group) -> list[Consumer]:
    """Weight-matrix consumers of ``group`` (nn.Linear/Conv1D-like, 2-D weights)."""
    return [Consumer(m, m.param.rsplit(".", 1)[0]) for m in group.members
            if m.role == "consumer" and m.param.endswith("weight")]


def per_unit(values: torch.Tensor, member: Member, units: int) -> torch.Tensor:
    """Sum per-channel ``values`` (along ``member.dim``) into per-unit totals."""
    out = torch.zeros(units, dtype=torch.float64)
    if member.total != member.size:  # a segment of a fused projection: its range only
        values = values.narrow(0, member.offset, member.size)
    return out.index_add_(0, member.unit_index(units), values.to(torch.float64))


def head_dim_of(group: Group) -> int:
    """Channels per attention head in the consumer: the finest unit stride among its members."""
    return min(m.stride for m in group.members if m.role == "consumer")
