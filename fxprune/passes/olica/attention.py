"""Locate the parts of every attention from the analysis alone (no per-model code).

The ``attn_v_channels`` group of an attention names its value producer (rows) and output consumer
(columns) and the channel within a head; the head group (``attn_kv_groups`` under GQA, else
``attn_heads``) gives the KV group of every value row and output column; its other producers are
the q/k projections.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...analysis.analyser import Analysis
from ...analysis.groups import Kind


@dataclass(frozen=True)
class AttentionParts:
    module: str            # the attention module path
    v_group: str           # id of its attn_v_channels group
    head_dim: int
    v_weight: str          # parameter names
    v_bias: str | None
    o_weight: str
    v_kv: torch.Tensor     # KV group of every value row
    o_kv: torch.Tensor     # KV group of every output column
    qk_weights: tuple      # q/k projection weights (factorisable)

    @property
    def v_module(self) -> str:
        return self.v_weight.rsplit(".", 1)[0]

    @property
    def o_module(self) -> str:
        return self.o_weight.rsplit(".", 1)[0]


def _weight(members, role):
    ms = [m for m in members if m.role == role and m.param.endswith("weight")]
    return ms[0] if len(ms) == 1 else None


def attention_parts(analysis: Analysis) -> dict[str, AttentionParts]:
    """``{attention module: AttentionParts}`` for every prunable ``attn_v_channels`` group whose
    value/output projections are single 2-D weights."""
    out = {}
    by_module = {}
    for g in analysis.groups:
        by_module.setdefault(g.module, []).append(g)
    for vg in analysis.groups:
        if vg.kind != Kind.V_CHANNELS or not vg.prunable:
            continue
        v, o = _weight(vg.members, "producer"), _weight(vg.members, "consumer")
        if v is None or o is None or v.dim != 0 or o.dim != 1:
            continue
        vb = next((m.param for m in vg.members if m.role == "producer" and m.param.endswith("bias")), None)
        heads = [g for g in by_module.get(vg.module, []) if g.kind in (Kind.ATTN_KV_GROUPS, Kind.ATTN_HEADS)]
        extra = [g for g in by_module.get(vg.module, []) if g.kind in (Kind.ATTN_Q_PER_KV, Kind.QK_CHANNELS)]
        v_kv = torch.zeros(v.size, dtype=torch.long)
        o_kv = torch.zeros(o.size, dtype=torch.long)
        if heads:
            hg = heads[0]
            for m in hg.members:
                if (m.param, m.dim) == (v.param, v.dim):
                    v_kv = m.unit_index(hg.units)
                if (m.param, m.dim) == (o.param, o.dim):
                    o_kv = m.unit_index(hg.units)
        qk = sorted({m.param for g in heads + extra for m in g.members
                     if m.role == "producer" and m.param.endswith("weight") and m.param != v.param and m.dim == 0})
        out[vg.module] = AttentionParts(vg.module, vg.id, vg.units, v.param, vb, o.param, v_kv, o_kv, tuple(qk))
    return out
