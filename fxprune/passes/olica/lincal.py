"""Olica's linear calibration: a low-rank linear model of a pruned module's residual, inserted beside it.

On calibration inputs ``X`` (pruned stream) with residual ``E = f_dense(X) - f_pruned(X)``:
``M = (X^T X + lambda I)^-1 X^T E`` (ridge, ``lambda = alpha * mean(diag(X^T X))``); per output
column the Pearson correlation ``r_i`` of ``X M_i`` with ``E_i``; column weights
``w_i = sigmoid((r_i - mean r) / 0.05)``; ``M w`` truncated to rank ``k``. fxprune truncates in the
metric of the inputs (the best rank-k approximation of ``X M w``, not of ``M w`` itself) and then
scales the result by the optimal factor in [0, 1], so the inserted module never increases the
residual error on its calibration data. Only sums are kept (Gram, cross Gram, first/second moments).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import RecipeError
from ...structure import add_linear_calibration


def hidden_size(model) -> int:
    """The model's hidden width (the rank of a linear calibration is a fraction of it)."""
    cfg = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    raise RecipeError("linear calibration: cannot tell the model's hidden size from its config")


class ResidualFit:
    """Accumulates ``X^T X``, ``X^T E``, ``sum X``, ``sum E``, ``sum E^2`` and the token count."""

    def __init__(self, d: int):
        f = dict(dtype=torch.float64)
        self.G, self.C = torch.zeros(d, d, **f), torch.zeros(d, d, **f)
        self.sx, self.se, self.see = torch.zeros(d, **f), torch.zeros(d, **f), torch.zeros(d, **f)
        self.n = 0

    def add(self, x: torch.Tensor, e: torch.Tensor) -> None:
        x, e = x.reshape(-1, x.shape[-1]).double(), e.reshape(-1, e.shape[-1]).double()
        self.G += x.T @ x
        self.C += x.T @ e
        self.sx += x.sum(0)
        self.se += e.sum(0)
        self.see += (e * e).sum(0)
        self.n += x.shape[0]

    def error(self, M: torch.Tensor) -> float:
        """``||E - X M||^2`` on the accumulated data."""
        return float(self.see.sum() - 2 * (M * self.C).sum() + (M * (self.G @ M)).sum())

    def pearson(self, M: torch.Tensor) -> torch.Tensor:
        n = self.n
        p_e = (M * self.C).sum(0)
        p_p = (M * (self.G @ M)).sum(0)
        p_s = self.sx @ M
        cov = p_e - p_s * self.se / n
        var_p = (p_p - p_s ** 2 / n).clamp_min(1e-30)
        var_e = (self.see - self.se ** 2 / n).clamp_min(1e-30)
        return cov / (var_p * var_e).sqrt()


@dataclass
class Candidate:
    """A fitted linear calibration for ``module``: ``x -> x @ down.T @ up.T`` (down: k x d, up: d x k)."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    mean_r: float
    error_before: float
    error_after: float


def fit(acc: ResidualFit, rank: int, alpha: float, temperature: float = 0.05, module: str = "") -> Candidate:
    G = acc.G
    d = G.shape[0]
    lam = alpha * float(torch.diagonal(G).mean().clamp_min(1e-12))
    A = G + lam * torch.eye(d, dtype=G.dtype)
    M = torch.cholesky_solve(acc.C, torch.linalg.cholesky(A))
    r = acc.pearson(M)
    w = torch.sigmoid((r - r.mean()) / temperature)
    Mw = M * w[None, :]
    # best rank-k approximation of X Mw: SVD of L^T Mw with G = L L^T (damped for safety)
    L = torch.linalg.cholesky(G + 1e-8 * float(torch.diagonal(G).mean().clamp_min(1e-12)) * torch.eye(d, dtype=G.dtype))
    U, S, Vh = torch.linalg.svd(L.T @ Mw, full_matrices=False)
    k = max(1, min(rank, d))
    left = torch.linalg.solve_triangular(L.T, U[:, :k] * S[:k][None, :], upper=True)  # d x k
    Mk = left @ Vh[:k]
    num, den = float((Mk * acc.C).sum()), float((Mk * (G @ Mk)).sum())
    scale = min(1.0, max(0.0, num / den)) if den > 0 else 0.0
    before = float(acc.see.sum())
    return Candidate(module, (left * scale).T.contiguous(), Vh[:k].T.contiguous(), float(r.mean()),
                     before, acc.error(Mk * scale))


@torch.no_grad()
def insert(model, cand: Candidate) -> None:
    """Insert ``cand`` beside its module (the module's class becomes its calibrated subclass)."""
    mod = model.get_submodule(cand.module)
    k, d = cand.down.shape
    lc = add_linear_calibration(mod, d, k)
    lc.down.weight.copy_(cand.down.to(lc.down.weight.dtype))
    lc.up.weight.copy_(cand.up.to(lc.up.weight.dtype))
