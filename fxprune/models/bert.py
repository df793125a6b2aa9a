"""BERT encoders: MHA (query/key/value + attention.output.dense) and intermediate/output FFN."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model, narrowed_values, set_attrs, sync_value_width


@register
class BertAdapter(FamilyAdapter):
    name = "bert"
    model_types = ("bert", "roberta")
    supported_kinds = frozenset({Kind.ATTN_HEADS, Kind.FFN, Kind.V_CHANNELS})

    def sync_module(self, m):
        if hasattr(m, "attention_head_size") and hasattr(m, "query"):
            width = m.query.out_features
            attrs = {"num_attention_heads": width // m.attention_head_size, "all_head_size": width}
            return set_attrs(m, attrs)
        if hasattr(m, "self") and hasattr(m, "output") and hasattr(m.self, "value"):  # BertAttention
            s, hd = m.self, m.self.attention_head_size
            heads = s.query.out_features // hd
            sync_value_width(s.value, m.output.dense, hd, heads, heads)
        return {}

    def patch_config(self, config, model) -> bool:
        base = base_model(model)
        layers = base.encoder.layer
        if narrowed_values(l.attention.self.value for l in layers):
            return False
        if any(l.attention.self.query.out_features != config.hidden_size for l in layers):
            return False
        inter = {l.intermediate.dense.weight.shape[0] for l in layers}
        if len(inter) != 1:
            return False
        config.intermediate_size = inter.pop()
        return True
