"""Olica's ratio split between Q/K, V/O and FFN, solved exactly with the sympy cost model.

Target ``s`` (over the recipe's scope), ``k`` (default 3): if ``s <= 0.4``: ``s_qk = 2s``,
``s_vo = 2s / (1 + k)``; else ``s_vo = 2s / (1 + k)``, ``s_qk = k s_vo``. Q/K projections are
factorised to the rank that removes ``s_qk`` of their weights (only where that saves parameters),
every KV group keeps ``round(head_dim (1 - s_vo))`` rotated value channels, and the FFN width is
solved (bisection on the kept fraction, widths rounded to ``channel_multiple``) so the total removal
is closest to the target. The achieved count is exact: cost-model polynomial + factorisation sizes.

``allocation="global"``: the attention share is the same (Olica's ``s_qk``/``s_vo``), but the FFN's
share of the budget is spread over the layers by the criterion's scores, standardised per group and
pooled (``allocate._global``, FLAP's reading) instead of one width for every layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..allocate import _global, _round
from .lowrank import saving_rank


def ratios(s: float, k: float = 3.0) -> tuple[float, float]:
    """``(s_qk, s_vo)`` for target ``s``."""
    s_vo = 2 * s / (1 + k)
    s_qk = 2 * s if s <= 0.4 else k * s_vo
    return min(s_qk, 0.95), min(s_vo, 0.95)


@dataclass(frozen=True)
class OlicaSplit:
    s_qk: float
    s_vo: float
    v_kept: dict        # v_channels group id -> kept rotated channels
    ranks: dict         # q/k weight param -> rank (only factorised ones)
    ffn_kept: dict      # ffn group id -> kept channels
    qk_removed: int     # weights the q/k factorisations remove (beyond the unit-count polynomial)
    removed: int
    budget: int
    total: int

    @property
    def achieved(self) -> float:
        return self.removed / self.total

    @property
    def kept(self) -> dict:
        """Group id -> kept units of the groups whose units are removed (FFN channels)."""
        return self.ffn_kept

    @property
    def plan(self):
        """No unit indices: the FFN units are chosen block by block."""
        return None


def solve(model, parts, ffn_groups, cost, expr, target: float, k: float = 3.0,
          channel_multiple: int = 8, allocation: str = "uniform", scores: dict | None = None,
          scale: str = "log") -> OlicaSplit:
    s_qk, s_vo = ratios(target, k) if target > 0 else (0.0, 0.0)
    total = cost.evaluate(expr, {})
    budget = int(round(target * total))
    ranks, qk_removed = {}, 0
    for p in parts.values():
        for w in p.qk_weights:
            out_f, in_f = model.get_parameter(w).shape
            r = saving_rank(in_f, out_f, s_qk) if s_qk > 0 else None
            if r is not None:
                ranks[w] = r
                qk_removed += in_f * out_f - r * (in_f + out_f)
    v_kept = {p.v_group: max(1, int(round(p.head_dim * (1 - s_vo)))) for p in parts.values()}

    def removed(frac):
        kept = dict(v_kept)
        kept.update({g.id: _round(int(round(g.units * frac)), g.units, channel_multiple) for g in ffn_groups})
        return qk_removed + total - cost.evaluate(expr, kept), kept

    if allocation == "global":
        if scores is None:
            raise ValueError("olica split with global FFN allocation needs the FFN groups' scores")
        kept = _global_ffn(ffn_groups, scores, v_kept, lambda kk: qk_removed + total - cost.evaluate(expr, kk),
                           budget, channel_multiple, scale)
        rem = qk_removed + total - cost.evaluate(expr, kept)
        ffn_kept = {g.id: kept[g.id] for g in ffn_groups if kept[g.id] < g.units}
        return OlicaSplit(s_qk, s_vo, v_kept, ranks, ffn_kept, qk_removed, rem, budget, total)

    lo, hi = 0.0, 1.0   # kept fraction of FFN channels; removal decreases with it
    best = removed(1.0)
    for _ in range(20):
        mid = (lo + hi) / 2
        rem, kept = removed(mid)
        if abs(rem - budget) < abs(best[0] - budget):
            best = (rem, kept)
        if rem > budget:
            lo = mid
        else:
            hi = mid
    rem, kept = best
    ffn_kept = {g.id: kept[g.id] for g in ffn_groups if kept[g.id] < g.units}
    return OlicaSplit(s_qk, s_vo, v_kept, ranks, ffn_kept, qk_removed, rem, budget, total)


def _global_ffn(ffn_groups, scores, v_kept, removed, budget, channel_multiple, scale: str = "log") -> dict:
    """FFN widths from pooled standardised scores, with the attention's value widths fixed: the FFN
    groups lose their lowest-scored units until the total removal (attention included) meets the budget."""
    def with_v(kept):
        return removed({**v_kept, **kept})
    if with_v({}) >= budget or not ffn_groups:  # the attention share alone meets the target
        return {**v_kept, **{g.id: g.units for g in ffn_groups}}
    kept = _global(ffn_groups, {g.id: scores[g.id] for g in ffn_groups}, with_v, budget, channel_multiple,
                   scale=scale)
    return {**v_kept, **kept}
