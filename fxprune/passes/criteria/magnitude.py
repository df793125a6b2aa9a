"""Magnitude: L2 norm of a unit's producer rows and consumer columns (no data)."""
import torch

from ..consumers import per_unit
from . import Criterion, register


@register
class Magnitude(Criterion):
    name = "magnitude"

    def score(self, group, model, stats):
        total = torch.zeros(group.units, dtype=torch.float64)
        for m in group.members:
            if m.role not in ("producer", "consumer"):
                continue
            p = model.get_parameter(m.param).detach().double()
            sq = p.pow(2).sum(dim=[d for d in range(p.dim()) if d != m.dim]) if p.dim() > 1 else p.pow(2)
            total += per_unit(sq, m, group.units)
        return total.sqrt()
