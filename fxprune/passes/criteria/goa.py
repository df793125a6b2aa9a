"""GOA output-approximation criteria (Li, Dong, Lei, CPAL 2025), in fxprune's reading.

* channels (FFN, SSM): ``||W[:, j]||^2 * sum_t a_{t,j}^2``, the energy unit j adds to the output;
* attention: greedy on the per-head output Gram ``C``: removing a set S costs ``1^T C_SS 1``; units
  are removed one at a time, each time the one whose removal adds least to that cost. Scores are
  the negative removal order (first removed = lowest). The paper's exact formulas are not public.
"""
import torch

from ...analysis.groups import ATTENTION_KINDS as ATTN
from ..consumers import consumers, head_dim_of, per_unit
from . import Criterion, Stat, register


@register
class GOA(Criterion):
    name = "goa"
    needs = frozenset({Stat.INPUT_SQ})
    needs_heads = True

    def score(self, group, model, stats):
        if group.kind in ATTN:
            return self._heads(group, model, stats)
        total = torch.zeros(group.units, dtype=torch.float64)
        for c in consumers(group):
            w2 = c.columns(model).detach().double().pow(2).sum(0)
            total += per_unit(w2 * stats[c.module].input_sq.double(), c.member, group.units)
        return total

    def _heads(self, group, model, stats):
        c = consumers(group)[0]
        C = stats[c.module].head_gram.double()
        hd = head_dim_of(group)
        heads = torch.arange(C.shape[0])
        unit_of_head = c.member.unit_index(group.units)[heads * hd]
        removed, order = torch.zeros(C.shape[0], dtype=torch.bool), []
        remaining = list(range(group.units))
        while len(remaining) > 1:
            best, best_cost = None, None
            for u in remaining:
                s = removed | (unit_of_head == u)
                cost = C[s][:, s].sum()
                if best_cost is None or cost < best_cost:
                    best, best_cost = u, cost
            order.append(best)
            removed |= unit_of_head == best
            remaining.remove(best)
        order += remaining
        scores = torch.empty(group.units, dtype=torch.float64)
        for rank, u in enumerate(order):
            scores[u] = float(rank)
        return scores
