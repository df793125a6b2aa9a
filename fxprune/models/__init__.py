"""Model-family adapters: the only model-specific code in fxprune, one small file per family.

An adapter never decides *what* is coupled (the analysis does that from the graph); it only keeps
module attributes and the config consistent with the weight shapes after surgery:

* ``sync(module)`` re-derives a module's attributes from its current weight shapes and returns the
  attributes it set (recorded in checkpoints so a loader can restore them);
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


from . import bert, gpt2, llama, mamba, opt  # noqa: E402,F401  (registration)

__all__ = ["ADAPTERS", "FamilyAdapter", "GenericAdapter", "adapter_for", "register", "sync_standard_module"]
