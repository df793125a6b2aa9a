"""Model knowledge: tiny configs (``tiny.py``), the transformers zoo (``zoo.py``) and optional family adapters.

fxprune needs no family adapter: surgery re-derives the module attributes that carry widths from a
traced forward (``analysis/widths.py``) and the stock config fields from a traced construction
(``base.patch_config_generic``). An adapter is for what those traces cannot see; it is one small
file here, registered with ``@register``, and its docstring says what it adds:

* ``sync_module(module)`` sets attributes the generic code could not (returns them);
* ``patch_config(config, model)`` writes uniform widths into the stock config and says whether the
  stock config can now describe the model (else the checkpoint records per-layer structure).
"""
from __future__ import annotations

from .base import FamilyAdapter, GenericAdapter, sync_standard_module

ADAPTERS: list[FamilyAdapter] = []


def register(adapter_cls):
    ADAPTERS.append(adapter_cls())
    return adapter_cls


def adapter_for(model) -> FamilyAdapter:
    """The adapter whose ``model_types`` contains ``model.config.model_type`` (else the generic one)."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    for a in ADAPTERS:
        if mt in a.model_types:
            return a
    return GenericAdapter()


__all__ = ["ADAPTERS", "FamilyAdapter", "GenericAdapter", "adapter_for", "register", "sync_standard_module"]
