"""``pooled`` allocation: one currency for every unit of every kind in every layer.

A criterion that declares ``cumulative_costs = True`` (``fisher_obs``) gives scores that, sorted
ascending, are the cost of removing the group's ``r`` cheapest units (calibration-loss increase after
LIAR's compensation); any other criterion's scores are read as additive per-unit costs and summed.
Only a criterion whose costs share one unit across layers (``fisher_obs``) makes the pool fair; with
raw energies (``goa``, ``flap``) the pool favours whichever layers happen to have small outputs. Each group's cost curve ``C_g(r)`` is replaced by its lower convex hull,
and units are removed in order of the smallest marginal cost *per parameter removed*
(``(C_g(r+1) - C_g(r)) / params_per_unit_g``) until the budget is met: the exact greedy solution of
the separable convex problem "least total cost for this many parameters". Attention units (a whole
head in every KV group: hundreds of thousands of parameters) compete with FFN channels (~2k) on
cost per parameter; no per-group standardisation (``global``'s z-scores make every layer look alike).

Widths are then rounded to ``channel_multiple`` and corrected towards the budget as ``global`` does.
"""
from __future__ import annotations

import heapq

import torch


def _lower_hull_slopes(costs: list[float]) -> list[float]:
    """Marginal costs (one per removed unit, nondecreasing) of the lower convex hull of
    ``(0, 0), (1, costs[0]), (2, costs[1]), ...``."""
    pts = [(0, 0.0)] + [(i + 1, c) for i, c in enumerate(costs)]
    hull = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    slopes = []
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        slopes += [(y2 - y1) / (x2 - x1)] * (x2 - x1)
    return slopes


def pooled(groups, scores: dict, removed, budget: int, attn_kinds, mult: int, cumulative: bool = True) -> dict:
    """Kept units per group (before rounding); ``removed(kept)`` counts parameters exactly."""
    kept = {g.id: g.units for g in groups}
    minimum = {g.id: (1 if g.kind in attn_kinds else min(mult, g.units)) for g in groups}
    heap = []
    slopes = {}
    for g in groups:
        s = torch.sort(scores[g.id].double())[0]
        s = (s if cumulative else torch.cumsum(s.clamp_min(0), 0)).tolist()[: g.units - minimum[g.id]]
        ppu = max(1, removed({g.id: g.units - 1}))  # parameters one unit of this group carries
        slopes[g.id] = [m / ppu for m in _lower_hull_slopes(s)]
        if slopes[g.id]:
            heapq.heappush(heap, (slopes[g.id][0], g.id, 0))
    while heap and removed(kept) < budget:
        _, gid, r = heapq.heappop(heap)
        kept[gid] -= 1
        if r + 1 < len(slopes[gid]):
            heapq.heappush(heap, (slopes[gid][r + 1], gid, r + 1))
    return kept


def measured_costs(curve: list[tuple[int, float]], units: int) -> torch.Tensor:
    """Cumulative cost of removing ``1 .. K`` units from probe points ``[(removed, cost)]``, ``K`` the
    largest probed count: piecewise linear through ``(0, 0)`` and the points, clipped at 0 and made
    nondecreasing (a probe that lowered the loss is noise or a free removal, never a gain the allocator
    should chase). Nothing past ``K`` is offered: a layer's loss rises steeply as it empties, and a
    slope extended from the last probe would price that as cheap (on SmolLM2 at 30% it emptied four
    FFNs), so no group loses more units than its largest probe removed."""
    xs = [0.0] + [float(k) for k, _ in curve]
    ys = [0.0] + [float(c) for _, c in curve]
    top = min(units, int(xs[-1]))
    out = torch.empty(top, dtype=torch.float64)
    for k in range(1, top + 1):
        j = next(i for i in range(1, len(xs)) if xs[i] >= k)
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        out[k - 1] = y0 + (y1 - y0) * (k - x0) / max(x1 - x0, 1e-12)
    return torch.cummax(out.clamp_min(0), 0)[0]
