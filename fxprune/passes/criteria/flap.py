"""FLAP fluctuation (An et al., AAAI 2024): Var_t(x_j) * ||W[:, j]||^2, summed over a unit's channels."""
import torch

from ..consumers import consumers, per_unit
from . import Criterion, Stat, register


@register
class Flap(Criterion):
    name = "flap"
    needs = frozenset({Stat.INPUT_SUM, Stat.INPUT_SQ})

    def score(self, group, model, stats):
        total = torch.zeros(group.units, dtype=torch.float64)
        for c in consumers(group):
            var = stats[c.module].variance.double().clamp_min(0)
            w2 = c.columns(model).detach().double().pow(2).sum(0)
            total += per_unit(var * w2, c.member, group.units)
        return total
