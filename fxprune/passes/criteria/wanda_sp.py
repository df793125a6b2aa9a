"""Wanda-sp: sum over the unit's consumer columns of |W_ij| * ||X_j||_2."""
import torch

from ..consumers import consumers, per_unit
from . import Criterion, Stat, register


@register
class WandaSP(Criterion):
    name = "wanda_sp"
    needs = frozenset({Stat.INPUT_SQ})

    def score(self, group, model, stats):
        total = torch.zeros(group.units, dtype=torch.float64)
        for c in consumers(group):
            norm = stats[c.module].input_sq.double().sqrt()
            w = c.columns(model).detach().double().abs().sum(0)
            total += per_unit(w * norm, c.member, group.units)
        return total
