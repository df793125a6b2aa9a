"""The shared linear algebra of every method: damped Cholesky factorisations and solves.

One damping rule everywhere (SparseGPT's): ``lambda = alpha * mean(diag(A)[:n])`` added to the first
``n`` diagonal entries (all of them by default; LIAR leaves its intercept row undamped). When the
factorisation fails, ``lambda`` grows tenfold (or starts at ``1e-6 * mean(diag)`` when ``alpha`` is
0) and it is tried again; after ``retries`` failures a ``LinAlgError`` names the matrix.
Explicit inverses are formed only where a formula needs a block of one (SparseGPT, multiple-removal).
"""
from __future__ import annotations

import torch

from .errors import FxPruneError


class LinAlgError(FxPruneError):
    """A matrix stayed indefinite after every damping retry; names the matrix (usually a layer)."""


def _lam0(A: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    diag = torch.diagonal(A)[:n]
    return alpha * diag.mean().clamp_min(1e-12) if n and alpha > 0 else A.new_tensor(0.0)


def _raised(lam: torch.Tensor, diag_mean: torch.Tensor) -> torch.Tensor:
    """The damping of the next try after a failed factorisation: 10x, or a floor from the undamped
    diagonal's mean when there was none."""
    return lam * 10 if lam > 0 else diag_mean.clamp_min(1e-12) * 1e-6


def cholesky_damped(A: torch.Tensor, alpha: float, *, n_damped: int | None = None, retries: int = 4,
                    what: str = "matrix") -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factor ``L`` of ``A + lambda I_n`` and the ``lambda`` that worked (see the module
    docstring). ``A`` is not modified on return: the damping goes onto its diagonal for each try and
    the saved diagonal is put back (no damped copy of ``A``: memory is ``A`` and ``L``)."""
    n = A.shape[0] if n_damped is None else n_damped
    lam = _lam0(A, n, alpha)
    diag = torch.diagonal(A)
    saved = diag[:n].clone()
    try:
        for _ in range(retries + 1):
            if n:
                diag[:n] = saved + lam
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) == 0:
                return L, lam
            del L
            base = saved if n else diag[:1]  # the undamped diagonal, as A was given
            lam = _raised(lam, base.mean())
    finally:
        diag[:n] = saved
    raise LinAlgError(f"{what}: not positive definite after damping up to lambda={float(lam) / 10:g}")


def cholesky_damped_inplace(make, alpha: float, *, retries: int = 4, what: str = "matrix"
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """SparseGPT's damped factor with one d x d matrix alive (two for a moment inside the LAPACK call):
    ``make()`` returns a fresh undamped Hessian the caller holds no reference to; its dead channels get
    ``H_jj = 1``, the damping goes onto its diagonal, and it is factored in its own storage
    (``cholesky_ex(out=H)``: lower ``L``, upper triangle zeroed). A failed try destroys the matrix, so
    the next one calls ``make()`` again. Returns ``(L, dead, lambda, mean diag)``; the same bits as
    ``robust_cholesky``'s ``L`` (same damping sequence, same LAPACK call)."""
    lam = None
    for _ in range(retries + 1):
        H = make()
        dead = dead_channels(H)
        H[dead, dead] = 1.0
        diag = torch.diagonal(H)
        mean = float(diag.mean())
        if lam is None:
            lam = _lam0(H, H.shape[0], alpha)
        diag.add_(lam)
        info = torch.empty((), dtype=torch.int32)
        torch.linalg.cholesky_ex(H, out=(H, info))
        if int(info) == 0:
            return H, dead, lam, mean
        del H, diag
        lam = _raised(lam, lam.new_tensor(mean))
    raise LinAlgError(f"{what}: not positive definite after damping up to lambda={float(lam) / 10:g}")


def solve_damped(A: torch.Tensor, B: torch.Tensor, n_damped: int, alpha: float,
                 prior: torch.Tensor | None = None, what: str = "matrix") -> torch.Tensor:
    """``Z`` solving ``(A + lambda I_n) Z = B + lambda P_n``: a ridge on the first ``n_damped`` unknowns
    towards ``prior``'s first rows (towards 0 without one). Falls back to least squares on the
    undamped system if every damping retry fails."""
    try:
        L, lam = cholesky_damped(A, alpha, n_damped=n_damped, retries=5, what=what)
    except LinAlgError:
        return torch.linalg.lstsq(A, B).solution
    rhs = B if prior is None else B + torch.cat([lam * prior[:n_damped], 0 * prior[n_damped:]])
    return torch.cholesky_solve(rhs, L)


def dead_channels(H: torch.Tensor) -> torch.Tensor:
    """Input channels that were always zero (``H_jj == 0``); SparseGPT sets ``H_jj = 1`` and ``w_j = 0``."""
    return torch.diagonal(H) == 0


def robust_cholesky(H: torch.Tensor, alpha: float, name: str = "?", retries: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A layer Hessian's damped Cholesky factor, SparseGPT-style: dead channels get ``H_jj = 1``, then
    ``cholesky_damped``. Returns ``(L, H_damped, alpha_used)``; raises ``LinAlgError`` naming the layer.
    ``H`` is not modified; memory: one copy of ``H`` (which becomes ``H_damped``, the damping added to
    its diagonal in place: no identity matrix) and ``L``."""
    H = H.clone()
    dead = dead_channels(H)
    H[dead, dead] = 1.0
    L, lam = cholesky_damped(H, alpha, retries=retries, what=f"layer {name}: Hessian")
    mean = float(torch.diagonal(H).mean())
    torch.diagonal(H).add_(lam)
    return L, H, float(lam) / mean if mean else 0.0


def inverse_hessian(H: torch.Tensor, alpha: float, name: str = "?") -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_damped, H_damped^-1)`` via Cholesky (the update formulas need the explicit inverse)."""
    L, Hd, _ = robust_cholesky(H, alpha, name)
    return Hd, torch.cholesky_inverse(L)


def masked_pcg(A: torch.Tensor, M: torch.Tensor, B: torch.Tensor, keep: torch.Tensor, X0: torch.Tensor,
               tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``r`` with index set ``I = keep[r]``: solve ``A_II x_I = B[r, I]`` (zeros off ``I``) by
    conjugate gradients preconditioned with ``M_II`` (``A``, ``M`` symmetric positive definite,
    ``(d, d)``; ``M ≈ A⁻¹`` makes few iterations), all rows at once: each iteration is two
    ``(rows, d) × (d, d)`` products, and rows leave the batch when converged.

    Stops a row when ``‖B_I − A_II x_I‖ ≤ tol ‖B_I‖``. Returns ``(X, converged)``: ``X`` is ``X0``
    refined (zero off ``I``) and ``converged`` the rows that met ``tol`` within ``max_iter`` iterations
    (the caller solves the others directly).
    """
    Kf = keep.to(B.dtype)
    X = X0 * Kf
    Bk = B * Kf
    R = Bk - (X @ A) * Kf
    bn = Bk.norm(dim=1)
    conv = R.norm(dim=1) <= tol * bn
    act = torch.nonzero(~conv).squeeze(1)
    if len(act) == 0 or max_iter <= 0:
        return X, conv
    x, r, k, bn = X[act], R[act], Kf[act], bn[act]
    z = (r @ M) * k
    p = z.clone()
    rz = (r * z).sum(1)
    for _ in range(max_iter):
        ap = (p @ A) * k
        alpha = rz / (p * ap).sum(1).clamp_min(torch.finfo(B.dtype).tiny)
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), ap, value=-1)
        done = r.norm(dim=1) <= tol * bn
        if bool(done.any()):
            X[act[done]] = x[done]
            conv[act[done]] = True
            left = ~done
            if not bool(left.any()):
                return X, conv
            act, x, r, k, bn, p, rz = act[left], x[left], r[left], k[left], bn[left], p[left], rz[left]
        z = (r @ M) * k
        rz_new = (r * z).sum(1)
        p = z.addcmul_((rz_new / rz).unsqueeze(1), p)
        rz = rz_new
    X[act] = x
    return X, conv
