"""Prune groups: typed, immutable results of the analysis.

A ``Group`` is one connected component of the factor graph that touches parameters. Pruning unit
``u`` of a group removes, from every ``Member`` (a parameter dim), the indices ``i`` with
``(i // member.stride) % group.units == u``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class Kind:
    """Group kinds (strings, so they print and serialise as themselves)."""

    ATTN_HEADS = "attn_heads"            # MHA heads: q, k, v rows + o columns of a head
    ATTN_KV_GROUPS = "attn_kv_groups"    # GQA: one kv head with its n_rep q heads
    ATTN_Q_PER_KV = "attn_q_per_kv"      # GQA/MQA: the same q head removed in every kv group
    FFN = "ffn_channels"                 # GLU (gate, up rows; down cols) or plain (fc1 rows; fc2 cols)
    SSM = "ssm_channels"                 # Mamba d_inner channels
    QK_CHANNELS = "attn_qk_channels"     # q/k channels within heads (not offered: head size fixed)
    V_CHANNELS = "attn_v_channels"       # v/o channels within heads (Olica's V/O decomposition)
    LOW_RANK = "low_rank"                # the rank of a factorised linear (x -> up(down(x))), reported only
    RESIDUAL = "residual"                # the hidden stream: not depth-2, reported only
    OTHER = "other"


#: Kinds whose unit is a whole attention head (or a KV group of heads).
ATTENTION_KINDS = (Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV)

DEPTH2_KINDS = {Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV, Kind.FFN, Kind.SSM, Kind.V_CHANNELS}


@dataclass(frozen=True)
class Member:
    """One parameter dim of a group. ``role``: producer | consumer | depthwise | scale | embedding."""

    param: str
    dim: int
    size: int
    stride: int
    role: str

    def unit_index(self, units: int) -> torch.Tensor:
        """For each index along ``dim``, the group unit it belongs to."""
        return (torch.arange(self.size) // self.stride) % units

    def indices(self, units: int, keep) -> torch.Tensor:
        """Indices along ``dim`` that survive when only units ``keep`` are kept (sorted)."""
        u = self.unit_index(units)
        return torch.nonzero(torch.isin(u, torch.as_tensor(list(keep), dtype=torch.long))).flatten()


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
        return self.id.split(":")[0]

    def members_by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def to_json(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "unit_size": self.unit_size, "units": self.units,
            "params_per_unit": self.params_per_unit, "prunable": self.prunable,
            "members": [{"param": m.param, "dim": m.dim, "role": m.role,
                         "channels_per_unit": m.size // self.units} for m in self.members],
            "blocked_by": list(self.blocked_by),
            **({"not_offered": self.not_offered} if self.not_offered else {}),
            "explanation": list(self.explanation),
            **({"detail": self.detail} if self.detail else {}),
        }
