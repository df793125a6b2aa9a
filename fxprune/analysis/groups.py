"""Prune groups: typed, immutable results of the analysis.

A ``Group`` is one connected component of the factor graph that touches parameters. Pruning unit
``u`` of a group removes, from every ``Member`` (a parameter dim), the indices ``i`` with
``(i // member.stride) % group.units == u``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


from ..kinds import ATTENTION_KINDS, DEPTH2_KINDS, Kind  # noqa: F401  (re-exported: old import path)


@dataclass(frozen=True)
class Member:
    """One parameter dim of a group. ``role``: producer | consumer | depthwise | expert | scale | embedding.

    The member covers indices ``[offset, offset + size)`` of a dim of ``total`` entries (a segment of
    a fused projection: q, k or v rows of one ``qkv`` weight); ``offset=0, total=size`` otherwise.
    ``unit_index``/``indices`` are local to that range; ``full_unit_index`` spans the whole dim."""

    param: str
    dim: int
    size: int
    stride: int
    role: str
    offset: int = 0
    total: int = 0

    def __post_init__(self):
        if not self.total:
            object.__setattr__(self, "total", self.size)

    def unit_index(self, units: int) -> torch.Tensor:
        """For each index in the member's range, the group unit it belongs to."""
        return (torch.arange(self.size) // self.stride) % units

    def full_unit_index(self, units: int) -> torch.Tensor:
        """For each index of the whole dim, its unit (-1 outside the member's range)."""
        out = torch.full((self.total,), -1, dtype=torch.long)
        out[self.offset:self.offset + self.size] = self.unit_index(units)
        return out

    def indices(self, units: int, keep) -> torch.Tensor:
        """Indices of the whole dim, within the member's range, that survive when only units ``keep``
        are kept (sorted)."""
        u = self.unit_index(units)
        return torch.nonzero(torch.isin(u, torch.as_tensor(list(keep), dtype=torch.long))).flatten() + self.offset


@dataclass(frozen=True)
class Group:
    """A coupled prune group. ``prunable`` is False when ``blocked_by`` or ``not_offered`` is set."""

    id: str
    kind: str
    units: int
    unit_size: int
    params_per_unit: int
    members: tuple[Member, ...]
    blocked_by: tuple[str, ...] = ()
    not_offered: str = ""
    explanation: tuple[str, ...] = ()
    detail: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def prunable(self) -> bool:
        return not self.blocked_by and not self.not_offered

    @property
    def module(self) -> str:
        """The module path the group's members share (the id without ':kind' or '#n')."""
        return self.id.split(":")[0].split("#")[0]

    def members_by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def to_json(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "unit_size": self.unit_size, "units": self.units,
            "params_per_unit": self.params_per_unit, "prunable": self.prunable,
            "members": [{"param": m.param, "dim": m.dim, "role": m.role,
                         "channels_per_unit": m.size // self.units,
                         **({"offset": m.offset, "length": m.size} if m.size != m.total else {})}
                        for m in self.members],
            "blocked_by": list(self.blocked_by),
            **({"not_offered": self.not_offered} if self.not_offered else {}),
            "explanation": list(self.explanation),
            **({"detail": self.detail} if self.detail else {}),
        }
