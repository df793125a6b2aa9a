"""LLaMA family (LLaMA, Mistral, Qwen2, Qwen3, Gemma, Phi-3-like): GQA attention + GLU MLP."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model, narrowed_values, set_attrs, sync_value_width


def _uniform(values):
    vals = set(values)
    return vals.pop() if len(vals) == 1 else None


@register
class LlamaAdapter(FamilyAdapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "granite")
    supported_kinds = frozenset({Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV, Kind.FFN,
                                 Kind.V_CHANNELS})

    def sync_module(self, m):
        if hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "num_key_value_groups"):
            q, k = m.q_proj.out_features, m.k_proj.out_features
            attrs = {"num_key_value_groups": q // k}
            for name in ("num_heads", "num_key_value_heads"):  # present in some family members
                if hasattr(m, name):
                    attrs[name] = (q if name == "num_heads" else k) // m.head_dim
            sync_value_width(m.v_proj, m.o_proj, m.head_dim, k // m.head_dim, q // m.head_dim)
            return set_attrs(m, attrs)
        if hasattr(m, "gate_proj") and hasattr(m, "down_proj") and hasattr(m, "intermediate_size"):
            m.intermediate_size = m.down_proj.weight.shape[1]
            return {"intermediate_size": m.intermediate_size}
        return {}

    def patch_config(self, config, model) -> bool:
        layers = base_model(model).layers
        attn = [l.self_attn for l in layers]
        if narrowed_values(a.v_proj for a in attn):
            return False
        hd = attn[0].head_dim
        heads = _uniform(a.q_proj.out_features // hd for a in attn)
        kv = _uniform(a.k_proj.out_features // hd for a in attn)
        inter = _uniform(l.mlp.down_proj.weight.shape[1] for l in layers)
        if heads is None or kv is None or inter is None:
            return False
        config.head_dim = hd
        config.num_attention_heads = heads
        config.num_key_value_heads = kv
        config.intermediate_size = inter
        return True
