"""Per-layer structure of a pruned model: parameter shapes and module attributes that differ from
what the stock config builds. Standalone (imports only torch): its source is copied verbatim into
``modeling_fxprune.py`` of saved checkpoints so stock transformers can load them with
``trust_remote_code=True``.
"""
import torch
from torch import nn


def apply_structure(model, structure):
    """Resize/add parameters to the recorded shapes and set recorded module attributes (in place).

    ``structure = {"params": {name: shape}, "attrs": {module path: {attr: value}}}``. Values are
    left uninitialised: a state dict is loaded afterwards."""
    for name, shape in structure.get("params", {}).items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        old = getattr(mod, attr, None)
        ref = old if isinstance(old, torch.Tensor) else next(model.parameters())
        new = nn.Parameter(torch.empty(tuple(shape), dtype=ref.dtype, device=ref.device),
                           requires_grad=getattr(old, "requires_grad", True))
        if attr in mod._parameters:
            mod._parameters[attr] = new
        else:
            if hasattr(mod, attr):
                delattr(mod, attr)
            mod.register_parameter(attr, new)
    for mod_name, attrs in structure.get("attrs", {}).items():
        mod = model.get_submodule(mod_name) if mod_name else model
        for k, v in attrs.items():
            setattr(mod, k, tuple(v) if isinstance(v, list) else v)
    return model
