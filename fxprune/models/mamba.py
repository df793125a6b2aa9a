"""Mamba (pure-torch path): d_inner channels across in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj."""
from __future__ import annotations

from ..analysis.groups import Kind
from . import register
from .base import FamilyAdapter, base_model


@register
class MambaAdapter(FamilyAdapter):
    name = "mamba"
    model_types = ("mamba",)
    supported_kinds = frozenset({Kind.SSM})

    def sync_module(self, m):
        if type(m).__name__ == "MambaMixer":
            m.intermediate_size = m.out_proj.weight.shape[1]
            return {"intermediate_size": m.intermediate_size}
        return {}

    def patch_config(self, config, model) -> bool:
        # MambaConfig derives intermediate_size from expand * hidden_size on load.
        widths = {l.mixer.out_proj.weight.shape[1] for l in base_model(model).layers}
        if widths != {config.intermediate_size}:
            return False
        return True
