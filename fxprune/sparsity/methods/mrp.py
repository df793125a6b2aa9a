"""Multiple-removal pruning (Zhao et al., "Pruning Foundation Models for High Accuracy without
Retraining", EMNLP 2024 Findings).

For one row ``w`` and pruned set ``P`` (kept set ``R``) the layer-wise loss ``½ δw H δwᵀ``
(``H = 2XXᵀ``) is minimised with ``w_P`` forced to zero by
    ``δw = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_{P,:}``, loss ``L(P) = ½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ``,
or, equivalently, by refitting the kept weights ``w_R = (H_RR)⁻¹ (H wᵀ)_R``.

This file has three pieces:
  * ``optimal_update``: the exact per-row solve for a given mask (below);
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

Exact solve (``optimal_update``). The unknowns of a row are ``δ_R`` (the update of the kept weights)
and ``y_P = (H δ)_P``; known are ``δ_P = −w_P`` and ``(H δ)_R = 0`` (optimality). Solving for them
needs one SPD system per row; its size depends on a *pivot set* ``S`` (a set of columns) that may be
shared by many rows: with the principal pivot transform of ``H`` on ``S``,
    ``G = [[K, −M], [Mᵀ, C]]``,  ``K = H_SS⁻¹``, ``M = K H_{S,S̄}``, ``C = H_S̄S̄ − H_S̄S M``
(one Cholesky of ``H_SS`` per pivot set), a row whose kept set is ``R`` only has to solve a system on
``a = S∖R`` (pruned columns inside ``S``) and ``b = R∖S`` (kept columns outside ``S``), of size
``|a| + |b| = |S Δ R|``:
    ``[[K_aa, −M_ab], [M_abᵀ, C_bb]] [y_a; δ_b] = [f_a; f_b]``,
solved by block elimination (Cholesky of ``K_aa``, then of the SPD Schur complement
``C_bb + M_abᵀ K_aa⁻¹ M_ab``); everything else of the row follows from two matrix products shared
by all rows of the pivot set. ``S = ∅`` is the refit form (``|R|``-sized systems ``H_RR``),
``S = all`` the update form (``|P|``-sized systems ``(H⁻¹)_PP``); ``form="auto"`` also offers the
majority kept sets of clusters of rows with similar masks (Hamming k-means on the masks), kept only
where the saved per-row work ``Σ (m_old³ − m_new³)/3`` exceeds the pivot's ``O(d³)`` cost, and gives
each row the pivot set nearest its own kept set. Any ``S`` gives the same exact optimum (up to
rounding); ``S`` only changes the cost. Rows are solved in chunks sorted by system size, padded with
identity (distinct sentinel columns) to the chunk's largest ``|a|`` and ``|b|``; chunks are sized to
stay in cache (``_CHUNK_FLOATS``, at most ``row_chunk`` rows).
Peak extra memory: ``O(d_in²)`` for ``H``, ``H⁻¹``, ``U`` and one pivot transform, plus
``rows × d_in`` for the right-hand sides and one chunk.
"""
from __future__ import annotations

import torch

from ..config import NM, MRPConfig, Unstructured
from ..hessian import dead_channels, robust_cholesky
from ..masks import check_pattern, cumulative_count, lowest_global, lowest_per_row, nm_patterns, select
from . import Pruned, register

_CHUNK_FLOATS = 1 << 20   # ~4 MiB of fp32 per chunk of gathered systems: stays in cache
_MAX_ANCHORS = 8          # cluster pivot sets tried by form="auto" (besides S = ∅ and S = all)
_TWO_SIDED = 3 ** (1 / 3)  # a cluster set's system costs like a one-sided one this much larger


def removal_loss(w: torch.Tensor, Hinv: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``½ w_P [(H⁻¹)_PP]⁻¹ w_Pᵀ`` for one row ``w`` and index tensor ``P``."""
    wP = w[P]
    return 0.5 * wP @ torch.linalg.solve(Hinv[P][:, P], wP)


def _padded_indices(sel: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column indices where ``sel`` is True (first ``width``, padded) and a validity mask."""
    order = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=sel.device).unsqueeze(0) < sel.sum(1, keepdim=True)
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
    if bool(valid.all()):
        return sub
    vv = valid.unsqueeze(2) & valid.unsqueeze(1)
    eye = torch.eye(idx.shape[1], dtype=M.dtype, device=M.device).expand_as(sub)
    return torch.where(vv, sub, eye)


# ---------------------------------------------------------------------------------------------
# exact solve for a fixed mask


def _pivot_transform(H: torch.Tensor, Hinv: torch.Tensor | None, S: torch.Tensor):
    """``(s, t, G)``: the columns in / out of the pivot set ``S`` (bool, ``(d,)``) and the principal
    pivot transform ``G = [[K, −M], [Mᵀ, C]]`` of ``H`` on ``S``, rows/columns ordered ``[s, t]``."""
    s, t = torch.nonzero(S).squeeze(1), torch.nonzero(~S).squeeze(1)
    if len(s) == 0:
        return s, t, H
    if len(t) == 0 and Hinv is not None:
        return s, t, Hinv
    Hs = H[s]
    Ls = torch.linalg.cholesky(Hs[:, s])
    K = torch.cholesky_inverse(Ls)
    if len(t) == 0:
        return s, t, K
    Z = torch.linalg.solve_triangular(Ls, Hs[:, t], upper=False)          # Ls⁻¹ H_st
    M = torch.linalg.solve_triangular(Ls.mT, Z, upper=True)              # H_ss⁻¹ H_st
    C = H[t][:, t] - Z.mT @ Z                                             # Schur complement of H_ss
    ns = len(s)
    G = torch.empty_like(H)
    G[:ns, :ns] = K
    G[:ns, ns:] = -M
    G[ns:, :ns] = M.mT
    G[ns:, ns:] = C
    return s, t, G


def _chol(A: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info.abs().max()):
        raise torch.linalg.LinAlgError("not positive definite")
    return L


def _chol_solve(b: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ b`` by two triangular solves (faster here than ``torch.cholesky_solve``)."""
    tri = torch.linalg.solve_triangular
    return tri(L.mT, tri(L, b, upper=False), upper=True)


def _chunk_solve(A: torch.Tensor, f: torch.Tensor, na: int) -> torch.Tensor:
    """Solve ``[[K_aa, −M_ab], [M_abᵀ, C_bb]] x = f`` per batch entry (``A`` as gathered from ``G``,
    ``K_aa`` its leading ``na × na`` block) by block elimination with two Cholesky factorisations
    (the larger SPD block is eliminated first, so the Schur complement is the smaller system)."""
    nb = A.shape[-1] - na
    f = f.unsqueeze(-1)
    tri = torch.linalg.solve_triangular
    if na == 0 or nb == 0:
        return _chol_solve(f, _chol(A)).squeeze(-1)
    if na >= nb:
        La = _chol(A[:, :na, :na])
        u = tri(La, f[:, :na], upper=False)
        Z = tri(La, A[:, :na, na:], upper=False).neg_()                     # La⁻¹ M_ab
        Lb = _chol(torch.baddbmm(A[:, na:, na:], Z.mT, Z))                 # C_bb + M_abᵀ K_aa⁻¹ M_ab
        xb = _chol_solve(f[:, na:] - Z.mT @ u, Lb)
        ya = tri(La.mT, u + Z @ xb, upper=True)
    else:
        Lb = _chol(A[:, na:, na:])
        v = tri(Lb, f[:, na:], upper=False)
        Y = tri(Lb, A[:, na:, :na], upper=False)                            # Lb⁻¹ M_abᵀ
        La = _chol(torch.baddbmm(A[:, :na, :na], Y.mT, Y))                 # K_aa + M_ab C_bb⁻¹ M_abᵀ
        ya = _chol_solve(f[:, :na] + Y.mT @ v, La)
        xb = tri(Lb.mT, v - Y @ ya, upper=True)
    return torch.cat([ya, xb], 1).squeeze(-1)


def _robust_chunk_solve(A, f, na):
    try:
        return _chunk_solve(A, f, na)
    except torch.linalg.LinAlgError:
        pass
    try:
        return _chunk_solve(A.double(), f.double(), na).to(f.dtype)
    except torch.linalg.LinAlgError:
        return torch.linalg.solve(A.double(), f.double()).to(f.dtype)


def _solve_pivot(W, H, Hinv, kept, S, row_chunk):
    """Exact ``δ`` (new weights ``W + δ``) for the rows of ``W`` with kept sets ``kept``, through the
    pivot set ``S`` (see the module docstring)."""
    dt, dev = H.dtype, H.device
    rows, d = W.shape
    s, t, G = _pivot_transform(H, Hinv, S)
    ns = len(s)
    perm = torch.cat([s, t])
    Wp, keptp = W[:, perm], kept[:, perm]
    aflag = ~keptp[:, :ns]                      # pruned inside S
    bflag = keptp[:, ns:]                       # kept outside S
    wbar = torch.where(keptp[:, ns:], 0, Wp[:, ns:])   # w on the pruned columns outside S
    # right-hand sides of every row, [f_S, f_S̄] in pivot order (only the a / b entries are used)
    F = torch.empty(rows, d, dtype=dt, device=dev)
    if ns:
        F[:, :ns] = -Wp[:, :ns]
        if d > ns:
            F[:, :ns] -= wbar @ (-G[:ns, ns:]).mT        # − (M w̄)_S
    if d > ns:
        F[:, ns:] = wbar @ G[ns:, ns:]                   # C w̄ (C symmetric)
    alpha, beta = aflag.sum(1), bflag.sum(1)
    m = alpha + beta
    order = torch.argsort(m, descending=True)
    # a chunk pads its a-part to its largest |a| and its b-part to its largest |b| with sentinel
    # columns d, d+1, ... of an identity block appended to G (none when all rows have equal sizes)
    npad = int(alpha.max() - alpha.min()) + int(beta.max() - beta.min())
    if npad:
        Gx = torch.zeros(d + npad, d + npad, dtype=dt, device=dev)
        Gx[:d, :d] = G
        Gx[d:, d:].diagonal().fill_(1)
        Fx = torch.cat([F, torch.zeros(rows, npad, dtype=dt, device=dev)], 1)
    else:
        Gx, Fx = G, F
    a_idx = torch.sort((~aflag).to(torch.int8), dim=1, stable=True).indices       # a positions first
    b_idx = torch.sort((~bflag).to(torch.int8), dim=1, stable=True).indices + ns
    V = torch.zeros(rows, d + npad, dtype=dt, device=dev)   # [y'_S, δ_S̄] of every row
    start = 0
    while start < rows:
        mm = int(m[order[start]])
        if mm == 0:
            break
        step = max(1, min(row_chunk, _CHUNK_FLOATS // (mm * mm)))
        ch = order[start:start + step]
        start += step
        al, be = alpha[ch, None], beta[ch, None]
        am, bm = int(al.max()), int(be.max())
        ar = torch.arange(am, device=dev)
        br = torch.arange(bm, device=dev)
        ia = a_idx[ch, :am]
        ib = b_idx[ch, :bm]
        if npad:
            ia = torch.where(ar < al, ia, d + ar - al)
            ib = torch.where(br < be, ib, d + am - al + br - be)
        idx = torch.cat([ia, ib], 1)
        c = len(ch)
        A = torch.empty(c, am + bm, am + bm, dtype=dt, device=dev)
        rowsel = Gx.index_select(0, idx.reshape(-1)).view(c, am + bm, -1)
        for j in range(c):
            torch.index_select(rowsel[j], 1, idx[j], out=A[j])
        sol = _robust_chunk_solve(A, torch.gather(Fx[ch], 1, idx), am)
        V[ch.unsqueeze(1), idx] = sol
    V = V[:, :d]
    V[:, ns:] -= wbar
    delta = torch.empty_like(Wp)
    if ns:
        delta[:, :ns] = V[:, :ns] @ G[:ns, :ns]
        if d > ns:
            delta[:, :ns] += V[:, ns:] @ G[:ns, ns:].mT
    delta[:, ns:] = V[:, ns:]
    out = torch.empty_like(W)
    out[:, perm] = Wp + delta
    return out


def _hamming(keptf: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """``|S Δ R_r|`` for every row (``keptf``: float kept masks) and every candidate set (``S``: float, one per row)."""
    return keptf.sum(1, keepdim=True) + S.sum(1).unsqueeze(0) - 2 * keptf @ S.T


def _choose_pivots(kept: torch.Tensor, max_anchors: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pivot sets and each row's choice: ``S = ∅``, ``S = all`` and up to ``max_anchors`` cluster
    majority sets, each kept only if the per-row work it saves exceeds its own cost.

    Cost model (per row, in units of one Cholesky flop): ``m³/3`` for a one-sided system (``S = ∅``:
    ``m = |R|``; ``S = all``: ``m = |P|``), ``(_TWO_SIDED · m)³/3`` for a cluster set (``m = |S Δ R|``:
    two factorisations, a triangular solve with ``|b|`` right-hand sides and a product, measured
    about three times slower than one Cholesky of the same total size on this CPU)."""
    rows, d = kept.shape
    keptf = kept.to(torch.float32)
    nk = keptf.sum(1)
    trivial = torch.minimum(nk, d - nk)
    anchors: list[torch.Tensor] = []

    def eff(dist):  # cluster-set distance in one-sided-equivalent size
        return dist * _TWO_SIDED

    if max_anchors > 0 and rows > 1:
        gen = torch.Generator(device="cpu").manual_seed(0)
        cand = keptf[torch.randperm(rows, generator=gen)[:min(rows, 8 * max_anchors)].to(kept.device)]
        best = trivial.clone()
        for _ in range(max_anchors):  # greedy seeding by the modelled saving Σ (best³ − new³)
            dist = eff(_hamming(keptf, cand))                              # (rows, cands)
            gain = (best.unsqueeze(1) ** 3 - torch.minimum(best.unsqueeze(1), dist) ** 3).sum(0)
            i = int(gain.argmax())
            if float(gain[i]) <= 0:
                break
            anchors.append(cand[i].clone())
            best = torch.minimum(best, dist[:, i])
        for _ in range(3):  # Lloyd steps: majority of the rows each set serves
            if not anchors:
                break
            dmin, who = eff(_hamming(keptf, torch.stack(anchors))).min(1)
            served = dmin < trivial
            for j in range(len(anchors)):
                sel = served & (who == j)
                if bool(sel.any()):
                    anchors[j] = (keptf[sel].mean(0) > 0.5).to(torch.float32)
        # keep a set only where it pays for its pivot transform (~ s³ + 2s²t + 2st² flops of
        # GEMM-like kernels, counted at a third of their flops)
        while anchors:
            A = torch.stack(anchors)
            dmin, who = torch.cat([trivial.unsqueeze(1), eff(_hamming(keptf, A))], 1).min(1)
            gains = []
            for j in range(len(anchors)):
                sel = who == j + 1
                sz = float(A[j].sum())
                cost = (sz ** 3 + 2 * sz * sz * (d - sz) + 2 * sz * (d - sz) ** 2) / 3
                saved = float(((trivial[sel] ** 3) - dmin[sel] ** 3).sum()) / 3
                gains.append(saved - cost)
            worst = min(range(len(anchors)), key=lambda j: gains[j])
            if gains[worst] >= 0:
                break
            anchors.pop(worst)
    sets = [torch.zeros(d, dtype=torch.bool, device=kept.device), torch.ones(d, dtype=torch.bool, device=kept.device)]
    sets += [a > 0.5 for a in anchors]
    cols = [nk, d - nk] + ([] if not anchors else list(eff(_hamming(keptf, torch.stack(anchors))).T))
    return sets, torch.stack(cols, 1).argmin(1)


def optimal_update(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, Hinv: torch.Tensor | None = None,
                   row_chunk: int = 64, form: str = "auto", max_anchors: int | None = None) -> torch.Tensor:
    """The weights minimising ``½ (w−ŵ) H (w−ŵ)ᵀ`` per row with ``ŵ_P = 0`` exactly (``P`` = ``mask``).

    ``H`` must be positive definite (damped). ``form``: ``"R"`` (refit the kept weights: pivot set
    ``S = ∅``), ``"P"`` (update formula, ``S = all``; needs ``Hinv``) or ``"auto"`` (per row the
    cheapest of those and of up to ``max_anchors`` shared cluster pivot sets; see the module
    docstring). Every form gives the same exact optimum; computed in the dtype of ``H``.
    """
    dt = H.dtype
    W = W.to(dt)
    rows, d = W.shape
    if form == "P" and Hinv is None:
        raise ValueError("form='P' needs Hinv")
    if form not in ("auto", "R", "P"):
        raise ValueError(f"form must be 'auto', 'R' or 'P', got {form!r}")
    kept = ~mask
    if rows == 0:
        return W.clone()
    if form == "R":
        sets, who = [torch.zeros(d, dtype=torch.bool, device=W.device)], torch.zeros(rows, dtype=torch.long)
    elif form == "P":
        sets, who = [torch.ones(d, dtype=torch.bool, device=W.device)], torch.zeros(rows, dtype=torch.long)
    else:
        sets, who = _choose_pivots(kept, _MAX_ANCHORS if max_anchors is None else max_anchors)
    out = torch.empty_like(W)
    for j, S in enumerate(sets):
        sel = torch.nonzero(who == j).squeeze(1)
        if len(sel) == 0:
            continue
        out[sel] = _solve_pivot(W[sel], H, Hinv, kept[sel], S, row_chunk)
    out[mask] = 0
    return out


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

_factor_cache: dict = {}


def _factors(stats, percdamp: float, dt: torch.dtype):
    """``(dead, H_damped, H⁻¹, U)`` of a layer's statistics. Linears fed the same input (q/k/v,
    gate/up) share one statistics object: the factorisation is reused while its Gram matrix is
    unchanged (one entry, keyed by the Gram tensor's identity and version; the entry holds the
    tensor, so its identity cannot be reused meanwhile)."""
    gram = getattr(stats, "gram", None)
    key = None
    if isinstance(gram, torch.Tensor):
        key = (id(gram), gram._version, stats.n, percdamp, dt)
        hit = _factor_cache.get("entry")
        if hit is not None and hit[0] == key and hit[1] is gram:
            return hit[2]
    H = stats.hessian().to(dt)
    dead = dead_channels(H)
    L, Hd, _ = robust_cholesky(H, percdamp, getattr(stats, "name", "?"))
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)
    out = (dead, Hd, Hinv, U)
    _factor_cache.clear()
    if key is not None:
        _factor_cache["entry"] = (key, gram, out)
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
    else:
        new = optimal_update(W0, Hd, mask, Hinv=Hinv, row_chunk=cfg.row_chunk)
    return Pruned(new.to(W.dtype), mask)
