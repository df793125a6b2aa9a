"""Budget allocation: from unit scores to a plan (group id -> kept units) that meets a target.

* ``uniform``: every attention group keeps the same number of units (the count whose removed share
  of attention parameters is closest to the target), every FFN/SSM group the same width, solved so
  the total removal is closest to the target.
* ``measured``: each group's cost curve is measured on the calibration loss (``ops/probe.py``: the
  group alone pruned at a few ratios, the rest dense) and the curves share ``pooled``'s greedy.
* ``global`` (FLAP's "AL-AM" reading): scores are standardised within each group, pooled across
  layers and kinds, and the lowest units are removed until the target is met: widths adapt per layer.
  ``scale="log"`` (the default) standardises the logarithm of channel energies, ``"linear"`` the
  energies themselves (FLAP; fxprune before 2026-12-02). Linear z-scores are set by each layer's
  outliers: on SmolLM2 at 30% and on the post-LN MiniLM encoder at 20% and 30% they empty single FFNs
  and lose to uniform widths, where log z-scores match or beat them (bench/results/quality3_levers.md).
  ``max_extra`` < 1 bounds how far that goes (as OWL bounds its layer ratios): no group keeps fewer
  than its ``uniform`` width minus ``max_extra`` of its units, so no single layer is emptied.

Widths of channel groups are rounded to ``channel_multiple``; the achieved removal is computed
exactly by the sympy cost model and reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..analysis.groups import Kind
from ..errors import RecipeError
from ..kinds import ATTENTION_KINDS
from .cost import CostModel

ATTN = ATTENTION_KINDS
# kinds allocated by unit count (no channel rounding; at least ``detail["min_keep"]`` units)
COUNTED = (*ATTENTION_KINDS, Kind.MOE_EXPERTS, Kind.SSM_HEADS)


@dataclass(frozen=True)
class Allocation:
    plan: dict | None   # group id -> sorted kept unit indices (None: widths only, units picked later)
    kept: dict          # group id -> kept unit count (only groups that lose units)
    removed: int        # parameters removed (exact, within the recipe's scope)
    budget: int         # parameters the target asked to remove
    total: int          # parameters in scope before pruning

    @property
    def achieved(self) -> float:
        return self.removed / self.total


def top_units(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` best-scored units, sorted by index (ties: lower index first)."""
    return sorted(torch.argsort(scores, descending=True, stable=True)[:k].tolist())


def _multiple(g, mult: int) -> int:
    """The channel multiple of ``g``: the recipe's, and a multiple of the group's own (expert widths)."""
    own = int(g.detail.get("multiple", 1))
    return mult * own // math.gcd(mult, own)


def _round(k: int, units: int, multiple: int) -> int:
    if units <= multiple:
        return max(1, k)
    return max(multiple, min(units, int(round(k / multiple)) * multiple))


def allocate(groups, scores: dict | None, cost: CostModel, expr, target: float, allocation: str,
             channel_multiple: int = 8, cumulative: bool = False, max_extra: float = 1.0,
             scale: str = "log", costs: dict | None = None) -> Allocation:
    """Plan for ``groups`` (already filtered by kind/protection) removing ``target`` of ``expr``.

    ``measured`` reads ``costs`` (group id -> cumulative cost of removing its 1, 2, ... lowest-scored
    units: ``allocate_pooled.measured_costs`` of the probe curves) for the widths and ``scores`` for
    which units go.

    ``uniform`` needs no scores: with ``scores=None`` it returns widths only (``plan=None``) and the
    units are chosen later, block by block, from pruned-stream scores."""
    total = cost.evaluate(expr, {})
    budget = int(round(target * total))
    attn = [g for g in groups if g.kind in COUNTED]
    chan = [g for g in groups if g.kind not in COUNTED]
    removed = lambda kept: total - cost.evaluate(expr, kept)  # noqa: E731
    if allocation == "uniform":
        kept = _uniform_widths(attn, chan, removed, budget, total, target, channel_multiple)
    elif allocation in ("pooled", "measured"):  # one cost currency across kinds and layers (allocate_pooled.py)
        if scores is None or (allocation == "measured" and costs is None):
            raise ValueError(f"{allocation} allocation needs scores" + (" and measured costs" if allocation == "measured"
                                                                       else ""))
        from .allocate_pooled import pooled
        got = pooled(attn + chan, scores if allocation == "pooled" else costs, removed, budget, COUNTED,
                     channel_multiple, cumulative or allocation == "measured")
        got = {g.id: max(got[g.id], _least(g)) for g in attn + chan}  # at least top_k experts stay
        # measured: no group loses more units than its largest probe removed (allocate_pooled.measured_costs)
        floor = None if allocation == "pooled" else {g.id: g.units - len(costs[g.id]) for g in attn + chan}
        kept = _finish(got, attn + chan, scores, removed, budget, channel_multiple, floor, "linear")
        if floor is not None and removed(kept) < 0.99 * budget:
            raise RecipeError(f"allocation 'measured': target {target} needs {budget} parameters removed, but no "
                              f"group may lose more than its largest probe removed ({removed(kept)} reachable); "
                              "add a larger ratio to 'probe_ratios'")
    else:
        if scores is None:
            raise ValueError("global allocation needs scores")
        floor = None
        if max_extra < 1.0:  # the uniform widths, less max_extra of each group's units
            uni = _uniform_widths(attn, chan, removed, budget, total, target, channel_multiple)
            floor = {g.id: uni[g.id] - int(max_extra * g.units) for g in attn + chan}
        kept = _global(attn + chan, scores, removed, budget, channel_multiple, floor, scale)
    kept = {g.id: kept[g.id] for g in groups if kept[g.id] < g.units}
    plan = None if scores is None else {gid: top_units(scores[gid], k) for gid, k in kept.items()}
    return Allocation(plan, kept, removed(kept), budget, total)


def _uniform_widths(attn, chan, removed, budget, total, target, mult) -> dict:
    """The ``uniform`` allocation: one count per kind and size of counted units (heads, experts, SSM
    head groups), then one width for every channel group, together closest to the budget."""
    kept = {}
    for part in _by_units(attn):
        kept.update(_uniform(part, [], removed, budget, total, target, mult))
    kept.update(_uniform([], chan, removed, budget, total, target, mult, kept))
    return kept


def _by_units(groups) -> list[list]:
    parts = {}
    for g in groups:
        parts.setdefault((g.kind, g.units), []).append(g)
    return list(parts.values())


def _least(g) -> int:
    return int(g.detail.get("min_keep", 1))


def _uniform(attn, chan, removed, budget, total, target, mult, fixed=None):
    kept = dict(fixed or {})
    if attn:
        units, lo = attn[0].units, max(_least(g) for g in attn)
        attn_total = removed({g.id: 1 for g in attn}) * units / max(1, units - 1)
        best = min(range(lo, units + 1),
                   key=lambda k: abs(removed({g.id: k for g in attn}) / max(attn_total, 1) - target))
        kept.update({g.id: best for g in attn})
    if chan:
        lo, hi = 1, max(g.units for g in chan)
        def at(frac_k):
            return {**kept, **{g.id: _round(min(g.units, frac_k), g.units, _multiple(g, mult)) for g in chan}}
        while lo < hi:  # largest width whose removal still reaches the budget
            mid = (lo + hi + 1) // 2
            if removed(at(mid)) >= budget:
                lo = mid
            else:
                hi = mid - 1
        cands = [lo, min(hi + 1, max(g.units for g in chan))]
        kept = min((at(c) for c in cands), key=lambda k: abs(removed(k) - budget))
    return {**{g.id: g.units for g in attn + chan}, **{k: v for k, v in kept.items()
                                                      if k in {g.id for g in attn + chan}}}


SCALES = ("log", "linear")


def _standardised(s: torch.Tensor, log: bool) -> torch.Tensor:
    """``s`` standardised within its group; with ``log``, its logarithm (scores are energies: a layer's
    scale becomes a shift, and a few outlier units no longer set everyone else's distance from the
    mean). A zero score (a dead unit) maps to the group's lowest value."""
    if log:
        s = s.double()
        s = torch.log(s.clamp_min(0) + 1e-12 * float(s.max().clamp_min(0)) + 1e-300)
    return (s - s.mean()) / (s.std() + 1e-12)


def _log_for(g, scale: str) -> bool:
    """Log-standardise channel groups' energies; attention heads, experts and SSM heads keep linear
    standardisation (some criteria score them by removal order, which a log would distort)."""
    return scale == "log" and g.kind not in COUNTED


def _global(groups, scores, removed, budget, mult, floor: dict | None = None, scale: str = "log"):
    pool = []
    for g in groups:
        s = scores[g.id]
        z = _standardised(s, _log_for(g, scale)) if g.units > 1 else s * 0
        for u in range(g.units):
            pool.append((float(z[u]), g.id, u))
    pool.sort()
    by_id = {g.id: g for g in groups}
    kept = {g.id: g.units for g in groups}
    minimum = {g.id: (_least(g) if g.kind in COUNTED else min(_multiple(g, mult), g.units)) for g in groups}
    if floor:
        minimum = {gid: max(m, floor[gid]) for gid, m in minimum.items()}
    for z, gid, u in pool:
        if removed(kept) >= budget:
            break
        if kept[gid] - 1 < minimum[gid]:
            continue
        kept[gid] -= 1
    return _finish(kept, groups, scores, removed, budget, mult, minimum if floor else None, scale)


def _finish(kept, groups, scores, removed, budget, mult, minimum: dict | None, scale: str):
    """Round channel widths to ``mult`` and step them back towards the budget."""
    by_id = {g.id: g for g in groups}
    for gid, k in kept.items():
        g = by_id[gid]
        if g.kind not in COUNTED:
            kept[gid] = _round(k, g.units, _multiple(g, mult))
    return _correct(kept, by_id, scores, removed, budget, mult, minimum or {}, scale)


def _correct(kept, by_id, scores, removed, budget, mult, minimum: dict, scale: str):
    """Rounding moved the removal off target: step channel groups by ``mult`` units (the group whose
    next unit scores lowest loses, the one whose last removed unit scores highest gains) while that
    brings the removal closer to the budget."""
    chan = [gid for gid in kept if by_id[gid].kind not in COUNTED and by_id[gid].units > mult]
    z = {gid: torch.sort(_standardised(scores[gid], _log_for(by_id[gid], scale)), descending=True)[0]
         for gid in chan}
    for _ in range(10 * len(chan) + 10):
        gap = removed(kept) - budget
        if gap < 0:   # remove more: the group whose weakest kept unit is weakest
            cand = [g for g in chan if kept[g] - mult >= max(mult, minimum.get(g, 0))]
            pick = min(cand, key=lambda g: float(z[g][kept[g] - 1]), default=None)
            step = -mult
        else:         # remove less: the group whose best removed unit is best
            cand = [g for g in chan if kept[g] + mult <= by_id[g].units]
            pick = max(cand, key=lambda g: float(z[g][kept[g]]), default=None)
            step = mult
        if pick is None:
            break
        trial = {**kept, pick: kept[pick] + step}
        if abs(removed(trial) - budget) >= abs(gap):
            break
        kept = trial
    return kept
