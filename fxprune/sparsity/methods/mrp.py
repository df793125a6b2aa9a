"""Multiple-removal pruning (Zhao et al., "Pruning Foundation Models for High Accuracy without
Retraining", EMNLP 2024 Findings).

For one row ``w`` and pruned set ``P`` the layer-wise loss ``½ δw H δwᵀ`` (``H = 2XXᵀ``) is minimised
with ``w_P`` forced to zero by
    ``δw = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_{P,:}``, loss ``L(P) = ½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ``,
or, equivalently, by refitting the kept weights ``w_R = (H_RR)⁻¹ (H wᵀ)_R``.

This file has three pieces:
  * ``removal_loss`` / ``optimal_update``: the exact solve for a given mask, batched over chunks of
    rows (rows sorted by their count, padded with identity to the chunk's largest count, so rows
    with equal counts share one batched Cholesky), choosing per chunk the cheaper of the R form
    (``|R|×|R|`` systems) and the P form (``|P|×|P|`` systems plus one ``(rows,d)×(d,d)`` product);
  * ``nm_group_choice``: the N:M pattern of one group of M columns with the lowest multiple-removal
    loss among all C(M,N) patterns (6 for 2:4, 70 for 4:8), batched over rows;
  * ``adaptive_mask``: the mask sweep. Memory/blocking scheme (ours; the paper's schedule is not
    public): columns are visited left to right in lazy blocks of ``blocksize`` as in SparseGPT. In a
    block, each group of M (or, unstructured, the whole block's pruned set per row, picked with the
    saliency ``w_j² / [H_c⁻¹]_jj``) is removed *jointly* with the multiple-removal update under the
    conditional inverse Hessian ``H_c⁻¹`` of the columns not yet frozen (read off the Cholesky factor
    ``U`` of ``H⁻¹``: ``H_c⁻¹ = U_{c:,c:}ᵀ U_{c:,c:}``); updates to the right of the block are applied
    lazily once per block. The sweep only decides the mask; the final weights come from the exact
    ``optimal_update`` on the full row, so every kept weight (left and right) is re-optimised.
Peak extra memory: ``O(d_in²)`` for ``H``, ``H⁻¹`` and ``U`` plus ``row_chunk · k²`` for the batched
solves (``row_chunk`` is reduced automatically so that this stays under ~128 MiB).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...errors import RecipeError
from ...linalg import dead_channels, robust_cholesky
from ..config import NM, Unstructured
from ..masks import check_pattern, cumulative_count, lowest_global, lowest_per_row, nm_patterns, select
from . import Pruned, register

_CHUNK_FLOATS = 1 << 25  # ~128 MiB of fp32 per batched solve


def removal_loss(w: torch.Tensor, Hinv: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ`` for one row ``w`` and index tensor ``P``."""
    wP = w[P]
    return 0.5 * wP @ torch.linalg.solve(Hinv[P][:, P], wP)


def _padded_indices(sel: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column indices where ``sel`` is True (first ``width``, padded) and a validity mask."""
    order = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width).unsqueeze(0) < sel.sum(1, keepdim=True)
    return order, valid


def _batched_spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` for a batch of SPD matrices; falls back to fp64 and then to LU."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info.abs().max()) == 0:
        return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
    A64, b64 = A.double(), b.double()
    L, info = torch.linalg.cholesky_ex(A64)
    if int(info.abs().max()) == 0:
        return torch.cholesky_solve(b64.unsqueeze(-1), L).squeeze(-1).to(b.dtype)
    return torch.linalg.solve(A64, b64).to(b.dtype)


def _gather_square(M: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``M[idx_r, idx_r]`` per row ``r``; padded rows/columns become the identity."""
    sub = M[idx.unsqueeze(2), idx.unsqueeze(1)]
    vv = valid.unsqueeze(2) & valid.unsqueeze(1)
    eye = torch.eye(idx.shape[1], dtype=M.dtype).expand_as(sub)
    return torch.where(vv, sub, eye)


def optimal_update(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, Hinv: torch.Tensor | None = None,
                   row_chunk: int = 64, form: str = "auto") -> torch.Tensor:
    """The weights minimising ``½ (w−ŵ) H (w−ŵ)ᵀ`` per row with ``ŵ_P = 0`` exactly (``P`` = ``mask``).

    ``H`` must be positive definite (damped). ``form``: ``"R"`` (refit kept weights), ``"P"`` (update
    formula; needs ``Hinv``) or ``"auto"`` (per chunk, whichever has the smaller systems).
    Computed in the dtype of ``H``.
    """
    dt = H.dtype
    W = W.to(dt)
    rows, d = W.shape
    kept = ~mask
    nk, npr = kept.sum(1), mask.sum(1)
    if form == "P" and Hinv is None:
        raise ValueError("form='P' needs Hinv")
    out = torch.empty_like(W)
    HW = None
    order = torch.argsort(nk)
    start = 0
    while start < rows:
        kk = int(nk[order[start]])
        width_guess = max(min(kk, d - kk), 1)
        step = max(1, min(row_chunk, _CHUNK_FLOATS // (width_guess * width_guess)))
        chunk = order[start:start + step]
        start += step
        kc, pc = int(nk[chunk].max()), int(npr[chunk].max())
        use_p = form == "P" or (form == "auto" and Hinv is not None and pc < kc)
        if pc == 0:
            out[chunk] = W[chunk]
            continue
        if use_p:
            idx, valid = _padded_indices(mask[chunk], pc)
            A = _gather_square(Hinv, idx, valid)
            wP = torch.gather(W[chunk], 1, idx) * valid
            z = _batched_spd_solve(A, wP) * valid
            zfull = torch.zeros(len(chunk), d, dtype=dt).scatter_add_(1, idx, z)
            new = W[chunk] - zfull @ Hinv
        else:
            if HW is None:
                HW = W @ H  # row r: (H wᵀ)ᵀ (H symmetric)
            idx, valid = _padded_indices(kept[chunk], kc)
            A = _gather_square(H, idx, valid)
            rhs = torch.gather(HW[chunk], 1, idx) * valid
            sol = _batched_spd_solve(A, rhs) * valid
            new = torch.zeros(len(chunk), d, dtype=dt).scatter_add_(1, idx, sol)
        new[mask[chunk]] = 0
        out[chunk] = new
    return out


def nm_group_choice(wg: torch.Tensor, A: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best pattern of one group. ``wg``: ``(rows, m)`` weights, ``A``: ``(m, m)`` inverse-Hessian block.

    Returns ``(best, loss)``: the index into ``nm_patterns(n, m)`` per row and its loss
    ``½ w_P A_PP⁻¹ w_Pᵀ``.
    """
    pats = nm_patterns(n, m)
    pidx = torch.nonzero(pats)[:, 1].reshape(len(pats), n)          # (K, n) pruned positions
    App = A[pidx.unsqueeze(2), pidx.unsqueeze(1)]                     # (K, n, n)
    Ainv = torch.linalg.inv(App)
    wP = wg[:, pidx]                                                  # (rows, K, n)
    loss = 0.5 * torch.einsum("rki,kij,rkj->rk", wP, Ainv, wP)
    best = torch.argmin(loss, dim=1)
    return best, loss.gather(1, best.unsqueeze(1)).squeeze(1)


def _nm_group_step(wg: torch.Tensor, ug: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best pattern per row for a group with conditional factor block ``ug`` (``A = ugᵀ ug``), and per
    pattern ``T_p = A_pp⁻¹ ug[:, p]ᵀ`` (``(K, n, m)``) so that the joint-removal ``e = w_P T_p``."""
    pats = nm_patterns(n, m)
    pidx = torch.nonzero(pats)[:, 1].reshape(len(pats), n)
    A = ug.T @ ug
    Ainv = torch.linalg.inv(A[pidx.unsqueeze(2), pidx.unsqueeze(1)])   # (K, n, n)
    wP = wg[:, pidx]                                                   # (rows, K, n)
    loss = torch.einsum("rki,kij,rkj->rk", wP, Ainv, wP)
    T = Ainv @ ug.T[pidx]                                              # (K, n, m)
    return torch.argmin(loss, dim=1), T


def _joint_removal(w_block: torch.Tensor, Ublk: torch.Tensor, pmask: torch.Tensor) -> torch.Tensor:
    """``e`` with ``δw_{c:} = −e U[c:c+b, c:]`` removing ``pmask`` jointly per row (conditional Hessian).

    ``w_block``: ``(rows, b)``; ``Ublk``: ``(b, b)`` diagonal block of ``U``; ``pmask``: ``(rows, b)``.
    ``e = w_P A_PP⁻¹ Ublk[:, P]ᵀ`` with ``A = Ublkᵀ Ublk``.
    """
    A = Ublk.T @ Ublk
    width = int(pmask.sum(1).max())
    if width == 0:
        return torch.zeros_like(w_block)
    idx, valid = _padded_indices(pmask, width)
    App = _gather_square(A, idx, valid)
    wP = torch.gather(w_block, 1, idx) * valid
    z = _batched_spd_solve(App, wP) * valid                           # w_P A_PP⁻¹
    zfull = torch.zeros_like(w_block).scatter_add_(1, idx, z)
    return zfull @ Ublk.T


def adaptive_mask(W: torch.Tensor, U: torch.Tensor, pattern, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask from the left-to-right joint-removal sweep (see module docstring), and the swept
    weights (joint removal per group/block, columns left of it frozen: zeros exactly on the mask)."""
    W = W.clone()
    rows, cols = W.shape
    mask = torch.zeros_like(W, dtype=torch.bool)
    nm = isinstance(pattern, NM)
    if nm:
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
        pats = nm_patterns(pattern.n, pattern.m)
        pidx = torch.nonzero(pats)[:, 1].reshape(len(pats), pattern.n)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        if nm:
            m = pattern.m
            for g in range(0, i2 - i1, m):
                ug = U1[g:g + m, g:g + m]
                wg = W1[:, g:g + m]
                best, T = _nm_group_step(wg, ug, pattern.n, m)
                wP = torch.gather(wg, 1, pidx[best])                       # (rows, n)
                e = torch.einsum("rn,rnm->rm", wP, T[best])               # w_P A_PP⁻¹ U_g[:, P]ᵀ
                W1[:, g:] -= e @ U1[g:g + m, g:]
                W1[:, g:g + m][pats[best]] = 0
                mask[:, i1 + g:i1 + g + m] = pats[best]
                Err1[:, g:g + m] = e
        else:
            score = W1 ** 2 / torch.diag(U1).reshape(1, -1) ** 2
            if pattern.granularity == "row":
                pm = lowest_per_row(score, cumulative_count(pattern.ratio, cols, i1, i2))
            else:
                pm = lowest_global(score, cumulative_count(pattern.ratio * rows, cols, i1, i2))
            Err1 = _joint_removal(W1, U1, pm)
            W1 -= Err1 @ U1
            mask[:, i1:i2] = pm
        W1[mask[:, i1:i2]] = 0
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return mask, W


def oneshot_mask(W: torch.Tensor, Hinv: torch.Tensor, pattern) -> torch.Tensor:
    """Scores from the full ``H⁻¹`` and the original weights: N:M by pattern enumeration per group,
    unstructured by the saliency ``w_j² / [H⁻¹]_jj``."""
    if isinstance(pattern, NM):
        m, pats = pattern.m, nm_patterns(pattern.n, pattern.m)
        mask = torch.zeros_like(W, dtype=torch.bool)
        for g in range(0, W.shape[1], m):
            best, _ = nm_group_choice(W[:, g:g + m], Hinv[g:g + m, g:g + m], pattern.n, m)
            mask[:, g:g + m] = pats[best]
        return mask
    return select(W ** 2 / torch.diag(Hinv).unsqueeze(0), pattern)


@dataclass(frozen=True)
class MRPConfig:
    """Multiple-removal pruning (Zhao et al., EMNLP 2024 Findings).

    Mask selection (``mask_selection``):
      * ``"adaptive"`` (default): a left-to-right sweep over lazy column blocks of ``blocksize``; in
        each group of M columns (N:M) every one of the C(M,N) patterns is scored by its
        multiple-removal loss ``½ w_P [(H_c⁻¹)_PP]⁻¹ w_Pᵀ`` under the conditional inverse Hessian of
        the not-yet-frozen columns, the cheapest is kept and removed jointly (unstructured: the
        saliency ``w_j² / [H_c⁻¹]_jj`` picks the block's zeros);
      * ``"oneshot"``: same scores from the full ``H⁻¹`` and the original weights, no sweep.
    Update: after the mask is fixed every row is re-solved exactly, ``w_R = (H_RR)⁻¹ (H wᵀ)_R``
    (or the equivalent ``δw = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_{P,:}`` when ``|P| < |R|``), batched over
    chunks of rows sorted by kept count and padded with identity to the chunk's largest count;
    ``row_chunk`` bounds memory (``row_chunk · k²`` floats).
    ``update="sweep"`` skips the exact final solve and keeps the sweep's weights (joint removal per
    group/block with the columns to its left frozen): about SparseGPT's cost, not the exact optimum.
    """

    blocksize: int = 128
    percdamp: float = 0.01
    mask_selection: Literal["adaptive", "oneshot"] = "adaptive"
    row_chunk: int = 64
    solve_dtype: Literal["float32", "float64"] = "float32"
    update: Literal["exact", "sweep"] = "exact"
    needs_calibration = True

    def __post_init__(self):
        if self.update not in ("exact", "sweep"):
            raise RecipeError(f"options.update must be 'exact' or 'sweep', got {self.update!r}")
        if self.mask_selection not in ("adaptive", "oneshot"):
            raise RecipeError(f"options.mask_selection must be 'adaptive' or 'oneshot', got {self.mask_selection!r}")


@register("mrp", MRPConfig)
def prune_mrp(W, stats, pattern, cfg: MRPConfig) -> Pruned:
    check_pattern(pattern, tuple(W.shape))
    dt = torch.float64 if cfg.solve_dtype == "float64" else torch.float32
    H = stats.hessian().to(dt)
    W0 = W.detach().to(dt).clone()
    dead = dead_channels(H)
    W0[:, dead] = 0
    L, Hd, _ = robust_cholesky(H, cfg.percdamp, stats.name)
    Hinv = torch.cholesky_inverse(L)
    if cfg.mask_selection == "adaptive":
        U = torch.linalg.cholesky(Hinv, upper=True)
        mask, swept = adaptive_mask(W0, U, pattern, cfg.blocksize)
        del U
    else:
        mask, swept = oneshot_mask(W0, Hinv, pattern), None
    if cfg.update == "sweep" and swept is not None:
        new = swept
    else:
        new = optimal_update(W0, Hd, mask, Hinv=Hinv, row_chunk=cfg.row_chunk)
    return Pruned(new.to(W.dtype), mask)
