"""Loss-weighted structured OBS: the loss a unit's removal costs *after* LIAR's compensation.

For a consumer ``y = W x (+ b)`` with augmented input Gram ``H`` (as in ``obs``) and the diagonal
output Fisher ``f`` (``passes/sensitivity.py``: ``f_i = sum_t (dL/dy_{t,i})^2 / N``), removing the
channel set P with the optimal compensation by the kept channels and the bias (LIAR's fold) raises
the calibration loss by about ``1/2 tr(diag(f) W_P [(H^-1)_PP]^-1 W_P^T)`` (per token). LIAR's
compensation does not depend on ``f`` (least squares on the input side is optimal for any diagonal
output weighting), so this is ``obs`` on ``diag(sqrt f) W``: the same greedy removal, costs in loss
units.

Scores are the *cumulative* cost when the unit is removed (first removed = lowest, so ``top_units``
keeps the last removed, as with ``obs``); they are comparable across layers and kinds, which the
``pooled`` allocation uses (``passes/allocate_pooled.py``): the network decides, in one currency,
whether a head or FFN channels in which layer go. Under data parallelism the Fisher is computed on
every rank's full window list (a gradient pass of its own, before scoring).
"""
import torch

from ..consumers import consumers
from ..sensitivity import output_fisher
from . import Criterion, Stat, register
from .obs import _state


@register
class FisherOBS(Criterion):
    name = "fisher_obs"
    needs = frozenset({Stat.INPUT_GRAM, Stat.INPUT_SUM})
    cumulative_costs = True   # scores are cumulative costs in loss units (see allocate_pooled)
    step_units = 8            # units removed per greedy round (groups of <= 64 units: 1)
    fisher_windows = 64       # calibration windows the gradient pass uses (at most)
    max_fraction = 0.8        # the greedy stops after this share of a group's units (no recipe removes more)

    def __init__(self):
        self.fisher = None

    def prepare(self, model, windows, groups, batch_size: int = 4):
        """The gradient pass (before any statistics): the output Fisher of every consumer."""
        mods = sorted({c.module for g in groups for c in consumers(g)})
        f = output_fisher(model, windows, mods, batch_size=min(batch_size, 4), max_windows=self.fisher_windows)
        n = float(f.pop("__tokens__"))
        self.fisher = {m: v / n for m, v in f.items()}

    def score(self, group, model, stats):
        if self.fisher is None:
            raise RuntimeError("fisher_obs: prepare() (the gradient pass) has not run")
        cons = consumers(group)
        states, unit_idx = [], []
        for c in cons:
            W = c.columns(model).detach().double() * self.fisher[c.module].sqrt().unsqueeze(1)
            states.append(list(_state(W, stats[c.module])))
            unit_idx.append(c.member.unit_index(group.units))
        return greedy_cumulative(states, unit_idx, group.units, self.step_units, self.max_fraction)


def _joint_cost(Hinv, Wa, P):
    WP = Wa[:, P]
    return float((WP @ torch.linalg.solve(Hinv[P][:, P], WP.T)).trace())


def greedy_cumulative(states, unit_idx, units: int, step_units: int, max_fraction: float = 1.0) -> torch.Tensor:
    """Greedy OBS removal (as ``obs.OBS.score``) returning each unit's cumulative cost at removal.
    After ``max_fraction`` of the units, the rest are ranked by their current costs in one go."""
    multi = [bool((torch.bincount(ui, minlength=units) > 1).any()) for ui in unit_idx]
    alive = torch.ones(units, dtype=torch.bool)
    scores = torch.empty(units, dtype=torch.float64)
    total = 0.0
    step = 1 if units <= 64 else step_units
    stop = max(1, units - int(max_fraction * units)) if units > 64 else 1
    while int(alive.sum()) > stop:
        cost = torch.zeros(units, dtype=torch.float64)
        for (Hinv, Wa), ui, m in zip(states, unit_idx, multi):
            if m:
                for u in torch.nonzero(alive).flatten().tolist():
                    cost[u] += _joint_cost(Hinv, Wa, torch.nonzero(ui == u).flatten())
            else:
                cost.index_add_(0, ui, Wa[:, :-1].pow(2).sum(0) / torch.diagonal(Hinv)[:-1].clamp_min(1e-30))
        cost[~alive] = float("inf")
        k = min(step, int(alive.sum()) - 1)
        drop = torch.argsort(cost, stable=True)[:k]
        joint = 0.0
        for s, ((Hinv, Wa), ui) in enumerate(zip(states, unit_idx)):
            P = torch.nonzero(torch.isin(ui, drop)).flatten()
            HPP_inv = torch.linalg.inv(Hinv[P][:, P])
            joint += float((Wa[:, P] @ HPP_inv @ Wa[:, P].T).trace())
            Wa = Wa - (Wa[:, P] @ HPP_inv) @ Hinv[P, :]
            Hinv = Hinv - Hinv[:, P] @ HPP_inv @ Hinv[P, :]
            Wa[:, P] = 0
            states[s] = [Hinv, Wa]
        own = cost[drop].clamp_min(0)
        share = torch.cumsum(own, 0) / own.sum() if float(own.sum()) > 0 else torch.arange(1, k + 1) / k
        scores[drop] = total + max(joint, 0.0) * share.double()
        total += max(joint, 0.0)
        alive[drop] = False
    last = torch.nonzero(alive).flatten()
    if len(last) > 1:  # not reached by the greedy: ranked by their own current costs, after the rest
        own = torch.zeros(units, dtype=torch.float64)
        for (Hinv, Wa), ui in zip(states, unit_idx):
            own.index_add_(0, ui, Wa[:, :-1].pow(2).sum(0) / torch.diagonal(Hinv)[:-1].clamp_min(1e-30))
        order = last[torch.argsort(own[last], stable=True)]
        scores[order] = total + torch.cumsum(own[order].clamp_min(0), 0) + 1e-12 * torch.arange(1, len(order) + 1)
    else:
        scores[last] = total + max(1.0, abs(total)) * 1e6  # never removed: the group keeps >= 1 unit
    return scores
