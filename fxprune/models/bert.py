"""BERT encoders: MHA (query/key/value + attention.output.dense) and intermediate/output FFN."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model, set_attrs


@register
class BertAdapter(FamilyAdapter):
    name = "bert"
    model_types = ("bert", "roberta")
    supported_kinds = frozenset({Kind.ATTN_HEADS, Kind.FFN})

    def sync_module(self, m):
        if hasattr(m, "attention_head_size") and hasattr(m, "query"):
            width = m.query.weight.shape[0]
            attrs = {"num_attention_heads": width // m.attention_head_size, "all_head_size": width}
            return set_attrs(m, attrs)
        return {}

    def patch_config(self, config, model) -> bool:
        base = base_model(model)
        layers = base.encoder.layer
        if any(l.attention.self.query.weight.shape[0] != config.hidden_size for l in layers):
            return False
        inter = {l.intermediate.dense.weight.shape[0] for l in layers}
        if len(inter) != 1:
            return False
        config.intermediate_size = inter.pop()
        return True
