"""Mask helpers. A mask is a bool tensor shaped like ``W`` with ``True`` = pruned (zeroed)."""
from __future__ import annotations

import itertools
from functools import lru_cache

import torch

from .config import NM, Pattern, Unstructured


class MaskError(ValueError):
    """A layer cannot take the requested pattern (e.g. ``d_in`` not a multiple of M)."""


@lru_cache(maxsize=None)
def nm_patterns(n: int, m: int) -> torch.Tensor:
    """All ``C(m, n)`` ways to prune ``n`` of ``m`` columns, as a ``(C(m,n), m)`` bool tensor."""
    rows = []
    for idx in itertools.combinations(range(m), n):
        r = [False] * m
        for i in idx:
            r[i] = True
        rows.append(r)
    return torch.tensor(rows, dtype=torch.bool)


def cumulative_count(ratio: float, total: int, start: int, end: int) -> int:
    """Zeros owed by the slice ``[start, end)`` so that the slices of ``[0, total)`` add up to exactly
    ``round(ratio · total)`` (cumulative rounding)."""
    return int(round(ratio * end)) - int(round(ratio * start))


def lowest_per_row(score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest scores in every row."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, True)
    return mask


def lowest_global(score: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest scores of the whole tensor."""
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(score.flatten(), k, largest=False).indices] = True
    return mask.view_as(score)


def lowest_nm(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask with the ``n`` lowest scores of every group of ``m`` consecutive columns."""
    rows, cols = score.shape
    if cols % m:
        raise MaskError(f"in_features={cols} is not a multiple of M={m}")
    g = score.reshape(rows, cols // m, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    mask.scatter_(2, torch.topk(g, n, dim=2, largest=False).indices, True)
    return mask.reshape(rows, cols)


def select(score: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Prune the lowest scores under ``pattern`` (one-shot selection from a fixed score)."""
    if isinstance(pattern, NM):
        return lowest_nm(score, pattern.n, pattern.m)
    if pattern.granularity == "row":
        return lowest_per_row(score, int(round(pattern.ratio * score.shape[1])))
    return lowest_global(score, int(round(pattern.ratio * score.numel())))


def check_pattern(pattern: Pattern, shape: tuple[int, int]) -> None:
    """Raise ``MaskError`` if a ``(d_out, d_in)`` layer cannot carry ``pattern``."""
    if isinstance(pattern, NM) and shape[1] % pattern.m:
        raise MaskError(f"in_features={shape[1]} is not a multiple of M={pattern.m}")


def mask_conforms(mask: torch.Tensor, pattern: Pattern) -> bool:
    """True iff ``mask`` has exactly the zeros ``pattern`` asks for."""
    rows, cols = mask.shape
    if isinstance(pattern, NM):
        if cols % pattern.m:
            return False
        return bool((mask.reshape(rows, -1, pattern.m).sum(-1) == pattern.n).all())
    if isinstance(pattern, Unstructured) and pattern.granularity == "row":
        return bool((mask.sum(1) == int(round(pattern.ratio * cols))).all())
    return int(mask.sum()) == int(round(pattern.ratio * mask.numel()))
