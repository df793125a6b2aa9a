"""Reconstruction-aware greedy selection (Optimal Brain Surgeon, structured; as in ZipLM): the output
error a unit's removal leaves *after* LIAR's least-squares compensation by the kept units.

For a consumer ``y = W x (+ b)`` with augmented input Gram ``H = [[G, s], [s^T, N]]`` (the constant
input is LIAR's intercept, never removed; ridge ``alpha * mean(diag G)`` on the channel block),
removing the channel set P with optimal compensation costs ``tr(W_P [(H^-1)_PP]^-1 W_P^T)``.
Units are removed greedily, ``step`` channels' worth at a time: each round removes the units with the
lowest cost given the removals so far, then downdates ``H^-1`` and the compensated ``W``. Scores are
the negative removal order (first removed = lowest), so ``top_units`` keeps the last removed.
Costs of several consumers of one group add. Pair it with ``reconstruction: liar``.
"""
import torch

from ..consumers import consumers
from . import Criterion, Stat, register

ALPHA = 0.01


def _state(W, st):
    G = st.gram.double()
    n = G.shape[0]
    H = torch.empty(n + 1, n + 1, dtype=torch.float64)
    H[:n, :n] = G
    H[:n, n] = H[n, :n] = st.input_sum.double()
    H[n, n] = float(st.count)
    lam = ALPHA * float(torch.diagonal(G).mean().clamp_min(1e-12))
    H[range(n), range(n)] += lam
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    Wa = torch.cat([W, torch.zeros(W.shape[0], 1, dtype=W.dtype)], 1)  # bias column: receives compensation
    return Hinv, Wa


@register
class OBS(Criterion):
    name = "obs"
    needs = frozenset({Stat.INPUT_GRAM, Stat.INPUT_SUM})
    step_units = 8   # units removed per greedy round (heads: 1)

    def score(self, group, model, stats):
        cons = consumers(group)
        states, unit_idx = [], []
        for c in cons:
            W = c.columns(model).detach().double()
            states.append(list(_state(W, stats[c.module])))
            unit_idx.append(c.member.unit_index(group.units))
        units = group.units
        multi_channel = [bool((torch.bincount(ui, minlength=units) > 1).any()) for ui in unit_idx]
        alive = torch.ones(units, dtype=torch.bool)
        order = []
        step = 1 if units <= 64 else self.step_units
        while int(alive.sum()) > 1:
            cost = torch.zeros(units, dtype=torch.float64)
            for (Hinv, Wa), ui, multi in zip(states, unit_idx, multi_channel):
                if multi:  # joint cost of a unit's channels
                    for u in torch.nonzero(alive).flatten().tolist():
                        P = torch.nonzero(ui == u).flatten()
                        WP = Wa[:, P]
                        cost[u] += (WP @ torch.linalg.solve(Hinv[P][:, P], WP.T)).trace()
                else:
                    cost.index_add_(0, ui, Wa[:, :-1].pow(2).sum(0) / torch.diagonal(Hinv)[:-1].clamp_min(1e-30))
            cost[~alive] = float("inf")
            k = min(step, int(alive.sum()) - 1)
            drop = torch.argsort(cost, stable=True)[:k]
            order += drop.tolist()
            alive[drop] = False
            for s, ((Hinv, Wa), ui) in enumerate(zip(states, unit_idx)):
                P = torch.nonzero(torch.isin(ui, drop)).flatten()
                HPP_inv = torch.linalg.inv(Hinv[P][:, P])
                Wa = Wa - (Wa[:, P] @ HPP_inv) @ Hinv[P, :]
                Hinv = Hinv - Hinv[:, P] @ HPP_inv @ Hinv[P, :]
                Wa[:, P] = 0
                states[s] = [Hinv, Wa]
        order += torch.nonzero(alive).flatten().tolist()
        scores = torch.empty(units, dtype=torch.float64)
        scores[torch.as_tensor(order)] = torch.arange(units, dtype=torch.float64)
        return scores
