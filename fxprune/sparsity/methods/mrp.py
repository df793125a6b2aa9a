"""Multiple-removal pruning (Zhao et al., "Pruning Foundation Models for High Accuracy without
Retraining", EMNLP 2024 Findings).

For one row ``w`` and pruned set ``P`` (kept set ``R``) the layer-wise loss ``½ δw H δwᵀ``
(``H = 2XXᵀ``) is minimised with ``w_P`` forced to zero by
    ``δw = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_{P,:}``, loss ``L(P) = ½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ``,
or, equivalently, by refitting the kept weights ``w_R = (H_RR)⁻¹ (H wᵀ)_R``.

This file has four pieces:
  * ``optimal_update``: the exact per-row solve for a given mask, direct (below);
  * ``refit_pcg``: the same solve by preconditioned conjugate gradients on all rows at once (the
    default solver; below);
  * ``nm_group_choice``: the N:M pattern of one group of M columns with the lowest multiple-removal
    loss among all C(M,N) patterns (6 for 2:4, 70 for 4:8), batched over rows;
  * ``adaptive_mask``: the mask sweep. Memory/blocking scheme (ours; the paper's schedule is not
    public): columns are visited left to right in lazy blocks of ``blocksize`` as in SparseGPT. In a
    block, each group of M (or, unstructured, the whole block's pruned set per row, picked with the
    saliency ``w_j² / [H_c⁻¹]_jj``) is removed *jointly* with the multiple-removal update under the
    conditional inverse Hessian ``H_c⁻¹`` of the columns not yet frozen (read off the Cholesky factor
    ``U`` of ``H⁻¹``: ``H_c⁻¹ = U_{c:,c:}ᵀ U_{c:,c:}``); updates to the right of the block are applied
    lazily once per block. N:M: every pattern of a group is scored exactly, all at once: with
    ``A_PP = C_p C_pᵀ`` the loss is ``‖w_P C_p⁻ᵀ‖²``, so one ``(rows, M) × (M, K·N)`` product per group
    scores all K patterns (the per-pattern factors of a whole block are computed in one batched call).
    The sweep only decides the mask; the final weights come from the exact ``optimal_update`` on the
    full row, so every kept weight (left and right) is re-optimised.

Exact solve (``optimal_update``): one SPD system per row, of size ``min(|R|, |P|)``: the refit
``H_RR δ_R = H_RP w_P`` (``δ_P = −w_P``; new row ``w + δ``) or the update form
``(H⁻¹)_PP z = w_P``, ``δ = −z (H⁻¹)_{P,:}``. Rows are solved in chunks sorted by system size; a
chunk's matrices are gathered with ``index_select`` (the chunk's rows of ``H`` in one call, then
columns per row; one batched ``gather`` for small systems), padded to
the chunk's largest size with distinct sentinel columns of an identity block appended to ``H``
(none when all rows have equal counts, as for N:M and per-row unstructured), factorised by one
batched Cholesky and solved by two triangular solves; chunks are sized to stay in cache
(``_CHUNK_FLOATS``, at most ``row_chunk`` rows). The unstructured sweep's joint removal within a
block uses the same solver on the block's conditional Hessian.
Iterative solve (``refit_pcg``, ``solver="pcg"``): the refit systems of all rows as one batch of CG
iterations, each two ``(rows, d_in) × (d_in, d_in)`` products (``x ↦ (x H)_R`` and the preconditioner
``r ↦ (r H⁻¹)_R``: ``(H⁻¹)_RR`` is ``H_RR⁻¹`` plus a positive rank-``|P|`` term), started from the sweep's
weights; on SmolLM2's layers 21-50 iterations reach a relative residual of 1e-6, for 0.69-0.81x the
direct solve's CPU time (kernel, blocks 0 and 29, all four patterns). It is exact to a tolerance, not
to rounding: the damped layer loss is within 2.1e-7 (relative) of the float64 optimum on those layers
at 2:4 and 50%, except block 0's ``o_proj`` (loss ~1e-3, 8e-6), where the float32 direct solve is
within 9e-9 (``bench/mrp_kernel.py exactness``, ``bench/results/mrp_profile.md``).
Peak extra memory: ``O(d_in²)`` for ``H``, ``H⁻¹`` and ``U``, plus ``rows × d_in`` for the
right-hand sides and one chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...errors import RecipeError
from ...linalg import dead_channels, masked_pcg, robust_cholesky
from ..config import NM, Unstructured
from ..masks import check_pattern, cumulative_count, lowest_global, lowest_per_row, nm_patterns, select
from . import Pruned, register

_CHUNK_FLOATS = 1 << 20   # ~4 MiB of fp32 per chunk of gathered systems: stays in cache


def removal_loss(w: torch.Tensor, Hinv: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ`` for one row ``w`` and index tensor ``P``."""
    wP = w[P]
    return 0.5 * wP @ torch.linalg.solve(Hinv[P][:, P], wP)


# ---------------------------------------------------------------------------------------------
# exact solve for a fixed mask


def _chunk_spd_solve(A: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``A⁻¹ f`` for a batch of SPD matrices: Cholesky and two triangular solves (faster here than
    ``torch.cholesky_solve``); falls back to fp64 and then to LU."""
    tri = torch.linalg.solve_triangular
    f = f.unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(A.mT)  # A is symmetric; the column-major view copies faster
    if int(info.abs().max()) == 0:
        return tri(L.mT, tri(L, f, upper=False), upper=True).squeeze(-1)
    A64, f64 = A.double(), f.double()
    L, info = torch.linalg.cholesky_ex(A64)
    if int(info.abs().max()) == 0:
        return tri(L.mT, tri(L, f64, upper=False), upper=True).squeeze(-1).to(f.dtype)
    return torch.linalg.solve(A64, f64).squeeze(-1).to(f.dtype)


def _row_systems_solve(G: torch.Tensor, F: torch.Tensor, sel: torch.Tensor, row_chunk: int) -> torch.Tensor:
    """Per row ``r``, with ``I = nonzero(sel[r])``: ``v_I = G_II⁻¹ F[r, I]``, zeros elsewhere (``G`` SPD)."""
    dt, dev = G.dtype, G.device
    rows, d = F.shape
    size = sel.sum(1)
    order = torch.argsort(size, descending=True)
    # a chunk pads its systems to its largest size with sentinel columns d, d+1, ... of an identity
    # block appended to G (none when all rows have equal sizes)
    npad = int(size.max() - size.min()) if rows else 0
    if npad:
        Gx = torch.zeros(d + npad, d + npad, dtype=dt, device=dev)
        Gx[:d, :d] = G
        Gx[d:, d:].diagonal().fill_(1)
        Fx = torch.cat([F, torch.zeros(rows, npad, dtype=dt, device=dev)], 1)
    else:
        Gx, Fx = G, F
    pos = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices      # selected columns first
    V = torch.zeros(rows, d + npad, dtype=dt, device=dev)
    start = 0
    while start < rows:
        k = int(size[order[start]])
        if k == 0:
            break
        step = max(1, min(row_chunk, _CHUNK_FLOATS // (k * k)))
        ch = order[start:start + step]
        start += step
        c = len(ch)
        idx = pos[ch, :k]
        if npad:
            sz = size[ch, None]
            ar = torch.arange(k, device=dev)
            idx = torch.where(ar < sz, idx, d + ar - sz)
        rowsel = Gx.index_select(0, idx.reshape(-1)).view(c, k, -1)
        if k <= 128:  # small systems (the sweep's blocks): one batched gather
            A = torch.gather(rowsel, 2, idx.unsqueeze(1).expand(c, k, k))
        else:
            A = torch.empty(c, k, k, dtype=dt, device=dev)
            for j in range(c):
                torch.index_select(rowsel[j], 1, idx[j], out=A[j])
        V[ch.unsqueeze(1), idx] = _chunk_spd_solve(A, torch.gather(Fx[ch], 1, idx))
    return V[:, :d]


def optimal_update(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, Hinv: torch.Tensor | None = None,
                   row_chunk: int = 64, form: str = "auto") -> torch.Tensor:
    """The weights minimising ``½ (w−ŵ) H (w−ŵ)ᵀ`` per row with ``ŵ_P = 0`` exactly (``P`` = ``mask``).

    ``H`` must be positive definite (damped). ``form``: ``"R"`` (refit the kept weights, ``|R|``-sized
    systems), ``"P"`` (update formula, ``|P|``-sized systems; needs ``Hinv``) or ``"auto"`` (per row,
    whichever system is smaller; the update form only when ``Hinv`` is given). Every form gives the
    same exact optimum; computed in the dtype of ``H``.
    """
    dt = H.dtype
    W = W.to(dt)
    rows, d = W.shape
    if form not in ("auto", "R", "P"):
        raise ValueError(f"form must be 'auto', 'R' or 'P', got {form!r}")
    if form == "P" and Hinv is None:
        raise ValueError("form='P' needs Hinv")
    npr = mask.sum(1)
    if form == "R" or (form == "auto" and Hinv is None):
        use_p = torch.zeros(rows, dtype=torch.bool, device=W.device)
    elif form == "P":
        use_p = torch.ones(rows, dtype=torch.bool, device=W.device)
    else:
        use_p = npr < d - npr
    out = torch.empty_like(W)
    r_rows, p_rows = torch.nonzero(~use_p).squeeze(1), torch.nonzero(use_p).squeeze(1)
    if len(r_rows):  # refit: H_RR δ_R = H_RP w_P, δ_P = −w_P
        Wr, Mr = W[r_rows], mask[r_rows]
        wbar = Wr * Mr
        out[r_rows] = Wr - wbar + _row_systems_solve(H, wbar @ H, ~Mr, row_chunk)
    if len(p_rows):  # update form: (H⁻¹)_PP z = w_P, δ = −z (H⁻¹)_{P,:}
        Wp = W[p_rows]
        out[p_rows] = Wp - _row_systems_solve(Hinv, Wp, mask[p_rows], row_chunk) @ Hinv
    out[mask] = 0
    return out


def refit_pcg(W: torch.Tensor, H: torch.Tensor, Hinv: torch.Tensor, mask: torch.Tensor, X0: torch.Tensor,
              tol: float, max_iter: int, row_chunk: int = 64) -> torch.Tensor:
    """The same per-row optimum as ``optimal_update`` (refit ``H_RR w_R = (H wᵀ)_R``), solved iteratively:
    conjugate gradients on all rows at once, preconditioned with ``(H⁻¹)_RR`` (the inverse of ``H_RR`` up
    to a rank-``|P|`` term, so few iterations) and started from ``X0`` (the sweep's weights). Each
    iteration is two ``(rows, d_in) × (d_in, d_in)`` products instead of one ``min(|R|,|P|)³/3``
    factorisation per row. A row stops at relative residual ``tol``; rows not there after ``max_iter``
    iterations are solved directly by ``optimal_update``."""
    dt = H.dtype
    W = W.to(dt)
    keep = ~mask
    X, conv = masked_pcg(H, Hinv, W @ H, keep, X0.to(dt), tol, max_iter)
    if not bool(conv.all()):
        rows = torch.nonzero(~conv).squeeze(1)
        X[rows] = optimal_update(W[rows], H, mask[rows], Hinv=Hinv, row_chunk=row_chunk)
    X[mask] = 0
    return X


# ---------------------------------------------------------------------------------------------
# mask selection


def _pattern_index(n: int, m: int) -> torch.Tensor:
    pats = nm_patterns(n, m)
    return torch.nonzero(pats)[:, 1].reshape(len(pats), n)


def nm_group_choice(wg: torch.Tensor, A: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best pattern of one group. ``wg``: ``(rows, m)`` weights, ``A``: ``(m, m)`` inverse-Hessian block.

    Returns ``(best, loss)``: the index into ``nm_patterns(n, m)`` per row and its loss
    ``½ w_P A_PP⁻¹ w_Pᵀ``.
    """
    pidx = _pattern_index(n, m)                                      # (K, n) pruned positions
    App = A[pidx.unsqueeze(2), pidx.unsqueeze(1)]                     # (K, n, n)
    Ainv = torch.linalg.inv(App)
    wP = wg[:, pidx]                                                  # (rows, K, n)
    loss = 0.5 * torch.einsum("rki,kij,rkj->rk", wP, Ainv, wP)
    best = torch.argmin(loss, dim=1)
    return best, loss.gather(1, best.unsqueeze(1)).squeeze(1)


def _nm_block_tables(U1: torch.Tensor, n: int, m: int):
    """For every group of ``m`` columns of a lazy block (``U1``: its diagonal block of ``U``), with
    ``ug`` the group's conditional factor, ``A = ugᵀ ug`` and ``A_PP = C_p C_pᵀ`` per pattern ``p``:
    ``B`` (``(G, m, K·n)``) with ``w_g B_g = [w_P C_p⁻ᵀ]_p`` (so the loss of ``p`` is ``‖·‖²``) and
    ``T`` (``(G, K·n, m)``) with ``e = [w_P C_p⁻ᵀ] T_p = w_P A_PP⁻¹ ug[:, P]ᵀ`` (the joint removal)."""
    b = U1.shape[0]
    G = b // m
    pidx = _pattern_index(n, m)
    K = len(pidx)
    ug = torch.stack([U1[g * m:(g + 1) * m, g * m:(g + 1) * m] for g in range(G)])   # (G, m, m)
    A = ug.mT @ ug
    App = A[:, pidx.unsqueeze(2), pidx.unsqueeze(1)]                                   # (G, K, n, n)
    C = torch.linalg.cholesky(App)
    eye = torch.eye(n, dtype=U1.dtype, device=U1.device).expand_as(C)
    Cinv = torch.linalg.solve_triangular(C, eye, upper=False)                          # (G, K, n, n)
    B = torch.zeros(G, m, K, n, dtype=U1.dtype, device=U1.device)
    gi = torch.arange(G, device=U1.device).view(G, 1, 1, 1)
    ki = torch.arange(K, device=U1.device).view(1, K, 1, 1)
    ji = torch.arange(n, device=U1.device).view(1, 1, n, 1)
    B[gi, pidx.view(1, K, 1, n), ki, ji] = Cinv                        # B[g, P_i, p, j] = Cinv[g,p,j,i]
    ugP = ug.mT[:, pidx]                                               # (G, K, n, m): ug[:, P]ᵀ
    T = Cinv @ ugP                                                     # C_p⁻¹ ug[:, P]ᵀ
    return B.reshape(G, m, K * n), T.reshape(G, K * n, m)


def adaptive_mask(W: torch.Tensor, U: torch.Tensor, pattern, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask from the left-to-right joint-removal sweep (see module docstring), and the swept
    weights (joint removal per group/block, columns left of it frozen: zeros exactly on the mask)."""
    W = W.clone()
    rows, cols = W.shape
    mask = torch.zeros_like(W, dtype=torch.bool)
    nm = isinstance(pattern, NM)
    if nm:
        n, m = pattern.n, pattern.m
        blocksize = max(m, blocksize - blocksize % m)
        pats = nm_patterns(n, m).to(W.device)
        K = len(pats)
        rr = torch.arange(rows, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        if nm:
            Err1 = torch.empty_like(W1)
            B, T = _nm_block_tables(U1, n, m)
            for gi, g in enumerate(range(0, i2 - i1, m)):
                Z = (W1[:, g:g + m] @ B[gi]).view(rows, K, n)
                best = Z.square().sum(2).argmin(1)
                sel = torch.zeros(rows, K, 1, dtype=W.dtype, device=W.device)
                sel[rr, best] = 1
                e = (Z * sel).view(rows, K * n) @ T[gi]                      # w_P A_PP⁻¹ U_g[:, P]ᵀ
                W1[:, g:] -= e @ U1[g:g + m, g:]
                pm = pats[best]
                W1[:, g:g + m].masked_fill_(pm, 0)
                mask[:, i1 + g:i1 + g + m] = pm
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


def _joint_removal(w_block: torch.Tensor, Ublk: torch.Tensor, pmask: torch.Tensor) -> torch.Tensor:
    """``e`` with ``δw_{c:} = −e U[c:c+b, c:]`` removing ``pmask`` jointly per row (conditional Hessian).

    ``w_block``: ``(rows, b)``; ``Ublk``: ``(b, b)`` diagonal block of ``U``; ``pmask``: ``(rows, b)``.
    ``e = w_P A_PP⁻¹ Ublk[:, P]ᵀ`` with ``A = Ublkᵀ Ublk``. The block part of the update,
    ``δ = −e Ublk``, is the exact optimum of the block's problem (Hessian ``A⁻¹``) for the mask
    ``pmask``, so it is computed by ``optimal_update`` (per row the smaller of the ``|P|`` and
    ``|R|`` systems) and ``e = −δ Ublk⁻¹``.
    """
    b = Ublk.shape[0]
    Uinv = torch.linalg.solve_triangular(Ublk, torch.eye(b, dtype=Ublk.dtype, device=Ublk.device), upper=True)
    A, Ainv = Ublk.T @ Ublk, Uinv @ Uinv.T
    new = optimal_update(w_block, Ainv, pmask, Hinv=A, row_chunk=1024)  # b ≤ 128: small systems
    return (w_block - new) @ Uinv


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


# ---------------------------------------------------------------------------------------------
# the method


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
    chunks of rows sorted by system size (``optimal_update``); ``row_chunk`` is the most rows per
    chunk (chunks are also capped at ~4 MiB of gathered systems).
    ``update="sweep"`` skips the exact final solve and keeps the sweep's weights (joint removal per
    group/block with the columns to its left frozen): about SparseGPT's cost, not the exact optimum.

    Solver of the exact update (``solver``): ``"pcg"`` (default) solves the same per-row systems by
    preconditioned conjugate gradients on all rows at once (``refit_pcg``), to a relative residual of
    ``pcg_tol`` (default 1e-6 in float32: the layer loss then lies within 2.1e-7, relative, of the
    exact optimum on SmolLM2's layers, 8e-6 on one; 1e-12 in float64), rows not converged after ``pcg_max_iter``
    iterations solved directly; ``"direct"``: one Cholesky factorisation per row (``optimal_update``),
    exact to float32 rounding (loss within 9e-9), 1.2-1.45x the kernel time.
    """

    blocksize: int = 128
    percdamp: float = 0.01
    mask_selection: Literal["adaptive", "oneshot"] = "adaptive"
    row_chunk: int = 64
    solve_dtype: Literal["float32", "float64"] = "float32"
    update: Literal["exact", "sweep"] = "exact"
    solver: Literal["pcg", "direct"] = "pcg"
    pcg_tol: float | None = None
    pcg_max_iter: int = 200
    needs_calibration = True

    def __post_init__(self):
        if self.update not in ("exact", "sweep"):
            raise RecipeError(f"options.update must be 'exact' or 'sweep', got {self.update!r}")
        if self.mask_selection not in ("adaptive", "oneshot"):
            raise RecipeError(f"options.mask_selection must be 'adaptive' or 'oneshot', got {self.mask_selection!r}")
        if self.solver not in ("pcg", "direct"):
            raise RecipeError(f"options.solver must be 'pcg' or 'direct', got {self.solver!r}")
        if self.pcg_tol is not None and not 0 < self.pcg_tol < 1:
            raise RecipeError(f"options.pcg_tol must be in (0, 1), got {self.pcg_tol!r}")


_factor_cache: dict = {}


def _factors(stats, percdamp: float, dt: torch.dtype):
    """``(dead, H_damped, H⁻¹, U)`` of a layer's statistics. Linears fed the same input (q/k/v,
    gate/up) have equal Gram matrices (the calibration runner gives each its own copy): the
    factorisation of the last statistics is reused when the next Gram matrix is equal to it (one
    entry holding a copy of that Gram matrix; comparing costs ``O(d²)`` against the ``O(d³)``
    factorisations)."""
    gram = getattr(stats, "gram", None)
    key = None
    if isinstance(gram, torch.Tensor):
        key = (tuple(gram.shape), gram.dtype, stats.n, percdamp, dt)
        hit = _factor_cache.get("entry")
        if hit is not None and hit[0] == key and torch.equal(hit[1], gram):
            return hit[2]
    H = stats.hessian().to(dt)
    dead = dead_channels(H)
    L, Hd, _ = robust_cholesky(H, percdamp, getattr(stats, "name", "?"))
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)
    out = (dead, Hd, Hinv, U)
    _factor_cache.clear()
    if key is not None:
        _factor_cache["entry"] = (key, gram.clone(), out)
    return out


@register("mrp", MRPConfig)
def prune_mrp(W, stats, pattern, cfg: MRPConfig) -> Pruned:
    check_pattern(pattern, tuple(W.shape))
    dt = torch.float64 if cfg.solve_dtype == "float64" else torch.float32
    dead, Hd, Hinv, U = _factors(stats, cfg.percdamp, dt)
    W0 = W.detach().to(dt).clone()
    W0[:, dead] = 0
    if cfg.mask_selection == "adaptive":
        mask, swept = adaptive_mask(W0, U, pattern, cfg.blocksize)
    else:
        mask, swept = oneshot_mask(W0, Hinv, pattern), None
    if cfg.update == "sweep" and swept is not None:
        new = swept
    elif cfg.solver == "pcg":
        tol = cfg.pcg_tol if cfg.pcg_tol is not None else (1e-12 if dt == torch.float64 else 1e-6)
        new = refit_pcg(W0, Hd, Hinv, mask, swept if swept is not None else W0, tol, cfg.pcg_max_iter,
                        cfg.row_chunk)
    else:
        new = optimal_update(W0, Hd, mask, Hinv=Hinv, row_chunk=cfg.row_chunk)
    return Pruned(new.to(W.dtype), mask)
