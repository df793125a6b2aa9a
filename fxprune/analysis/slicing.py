"""What a plan means for each parameter, and the slicing itself (shared by surgery and the dry run).

A plan maps group id -> the unit indices to KEEP. ``keep_masks`` turns it into one boolean mask per
(parameter, dim) over the dim's original size (the intersection over the groups that touch it);
``slice_parameters`` applies them (``index_select``), on any device, meta included.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..errors import SurgeryError


def keep_masks(groups: dict, plan: dict) -> dict:
    """(param, dim) -> boolean keep mask over the ORIGINAL size. ``groups``: id -> Group."""
    masks = {}
    for gid, keep in plan.items():
        g = groups[gid]
        keep_t = torch.as_tensor(list(keep), dtype=torch.long)
        for m in g.members:
            ui = m.full_unit_index(g.units)
            k = torch.isin(ui, keep_t) | (ui < 0)  # outside the member's segment: untouched
            key = (m.param, m.dim)
            masks[key] = masks[key] & k if key in masks else k
    return masks


def get_parameter(model: nn.Module, name: str):
    """(owning module, attribute name, tensor) of a parameter or buffer FQN."""
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return mod, attr, getattr(mod, attr)


def slice_parameters(model: nn.Module, masks: dict) -> set:
    """Keep only the masked entries of every listed parameter (in place); returns the module paths
    touched (the parameters' modules and their ancestors)."""
    per_param = defaultdict(dict)
    for (pname, dim), keep in masks.items():
        per_param[pname][dim] = keep
    touched = set()
    with torch.no_grad():
        for pname, dims in per_param.items():
            try:
                mod, attr, p = get_parameter(model, pname)
            except AttributeError as e:
                raise SurgeryError(f"parameter {pname} named by the analysis is not in the model") from e
            new = p.data
            for dim, keep in dims.items():
                if keep.numel() != new.shape[dim]:
                    raise SurgeryError(f"{pname} dim {dim} has size {new.shape[dim]}, the group expects "
                                       f"{keep.numel()}: was the model changed after analysis?")
                new = new.index_select(dim, torch.nonzero(keep).flatten().to(new.device))
            if isinstance(p, nn.Parameter):
                setattr(mod, attr, nn.Parameter(new.contiguous(), requires_grad=p.requires_grad))
            else:  # a buffer
                mod._buffers[attr] = new.contiguous()
            parts = pname.split(".")[:-1]
            for i in range(len(parts), -1, -1):
                touched.add(".".join(parts[:i]))
    return touched
