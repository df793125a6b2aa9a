"""Olica's channel score (He & Lin, ICML 2025) for FFN-like groups:
``sum_producers ||W_p[j] * sqrt(E[x_p^2])||_2 + sum_consumers ||W_c[:, j]||_2 * sqrt(E[z_j^2])``
(GLU: up and gate rows weighted by the FFN input's second moments, plus the down column weighted by
the channel's own second moment). Producer statistics come from ``producer_needs``."""
import torch

from ..consumers import consumers, per_unit
from . import Criterion, Stat, register


def producers(group):
    return [m for m in group.members if m.role == "producer" and m.param.endswith("weight")]


@register
class Olica(Criterion):
    name = "olica"
    needs = frozenset({Stat.INPUT_SQ})
    producer_needs = frozenset({Stat.INPUT_SQ})

    def score(self, group, model, stats):
        total = torch.zeros(group.units, dtype=torch.float64)
        for m in producers(group):
            mod = m.param.rsplit(".", 1)[0]
            w = model.get_parameter(m.param).detach().double().movedim(m.dim, 0).flatten(1)
            s_in = stats[mod].second_moment.double().clamp_min(0).sqrt()
            total += per_unit((w * s_in).norm(dim=1), m, group.units)
        for c in consumers(group):
            w = c.columns(model).detach().double().norm(dim=0)
            total += per_unit(w * stats[c.module].second_moment.double().clamp_min(0).sqrt(), c.member, group.units)
        return total
