"""GPT-2: fused ``c_attn`` Conv1D (transposed weights, q/k/v thirds) and a plain FFN."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model, set_attrs


@register
class GPT2Adapter(FamilyAdapter):
    name = "gpt2"
    model_types = ("gpt2",)
    supported_kinds = frozenset({Kind.ATTN_HEADS, Kind.FFN})

    def sync_module(self, m):
        if type(m).__name__ == "GPT2Attention" and not m.is_cross_attention:
            split = m.c_attn.weight.shape[1] // 3
            attrs = {"split_size": split, "num_heads": split // m.head_dim, "embed_dim": split}
            return set_attrs(m, attrs)
        return {}

    def patch_config(self, config, model) -> bool:
        # GPT2Config derives head_dim from n_embd / n_head: fewer heads cannot be expressed. FFN
        # width can (n_inner) when every layer keeps the same width and heads are intact.
        blocks = base_model(model).h
        if any(b.attn.c_attn.weight.shape[1] != 3 * config.n_embd for b in blocks):
            return False
        inner = {b.mlp.c_fc.weight.shape[1] for b in blocks}
        if len(inner) != 1:
            return False
        config.n_inner = inner.pop()
        return True
