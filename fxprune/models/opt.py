"""OPT: MHA with separate q/k/v/out projections and a plain fc1/fc2 FFN."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model, narrowed_values, set_attrs, sync_value_width


@register
class OPTAdapter(FamilyAdapter):
    name = "opt"
    model_types = ("opt",)
    supported_kinds = frozenset({Kind.ATTN_HEADS, Kind.FFN, Kind.V_CHANNELS})

    def sync_module(self, m):
        if type(m).__name__ == "OPTAttention":
            width = m.q_proj.out_features
            attrs = {"num_heads": width // m.head_dim, "embed_dim": width}
            sync_value_width(m.v_proj, m.out_proj, m.head_dim, width // m.head_dim, width // m.head_dim)
            return set_attrs(m, attrs)
        return {}

    def patch_config(self, config, model) -> bool:
        layers = base_model(model).decoder.layers
        if narrowed_values(l.self_attn.v_proj for l in layers):
            return False
        if any(l.self_attn.q_proj.out_features != config.hidden_size for l in layers):
            return False  # head_dim derives from hidden_size / num_attention_heads
        ffn = {l.fc1.weight.shape[0] for l in layers}
        if len(ffn) != 1:
            return False
        config.ffn_dim = ffn.pop()
        return True
