"""OPT: MHA with separate q/k/v/out projections and a plain fc1/fc2 FFN."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model, set_attrs


@register
class OPTAdapter(FamilyAdapter):
    name = "opt"
    model_types = ("opt",)
    supported_kinds = frozenset({Kind.ATTN_HEADS, Kind.FFN})

    def sync_module(self, m):
        if type(m).__name__ == "OPTAttention":
            width = m.q_proj.weight.shape[0]
            attrs = {"num_heads": width // m.head_dim, "embed_dim": width}
            return set_attrs(m, attrs)
        return {}

    def patch_config(self, config, model) -> bool:
        layers = base_model(model).decoder.layers
        if any(l.self_attn.q_proj.weight.shape[0] != config.hidden_size for l in layers):
            return False  # head_dim derives from hidden_size / num_attention_heads
        ffn = {l.fc1.weight.shape[0] for l in layers}
        if len(ffn) != 1:
            return False
        config.ffn_dim = ffn.pop()
        return True
