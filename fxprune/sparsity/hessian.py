"""Per-layer input statistics for sparsification: the Hessian ``H = 2 X Xᵀ`` of the layer-wise loss.

Lifecycle (as IST-DASLab sparsegpt): ``add_batch`` while calibration data flows through the layer,
then the solver asks for ``damped()`` / ``cholesky_inverse()``, then ``free()``. ``X`` is never stored:
only the Gram matrix ``G = Σ_t x_t x_tᵀ`` (fp64) and the token count ``n``.
"""
from __future__ import annotations

import torch

from ..errors import FxPruneError


class HessianError(FxPruneError):
    """The Hessian of a layer is not positive definite even after damping retries (names the layer)."""


class HessianAccumulator:
    """Accumulates ``G = Σ x xᵀ`` over every token fed to one linear layer (inputs ``(..., d_in)``)."""

    def __init__(self, d_in: int, name: str = "?"):
        self.name = name
        self.d_in = d_in
        self.gram = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if x.shape[-1] != self.d_in:
            raise HessianError(f"layer {self.name}: input width {x.shape[-1]} != in_features {self.d_in}")
        xf = x.float()
        self.gram += (xf.T @ xf).double()
        self.n += x.shape[0]

    @property
    def sq_norms(self) -> torch.Tensor:
        """``||X_j||²`` per input channel (Wanda's statistic)."""
        return torch.diagonal(self.gram).clone()

    def hessian(self, normalise: bool = True) -> torch.Tensor:
        """``H = 2 G`` (``2 G / n`` if ``normalise``; the scale changes no solution), undamped, fp64."""
        if self.n == 0:
            raise HessianError(f"layer {self.name}: no calibration tokens reached it")
        return 2.0 * self.gram / (self.n if normalise else 1)

    def free(self) -> None:
        self.gram = None


def dead_channels(H: torch.Tensor) -> torch.Tensor:
    """Input channels that were always zero (``H_jj == 0``); SparseGPT sets ``H_jj = 1`` and ``w_j = 0``."""
    return torch.diagonal(H) == 0


def damp(H: torch.Tensor, alpha: float) -> torch.Tensor:
    """``H + α · mean(diag H) · I`` (a copy); dead channels get ``H_jj = 1`` first."""
    H = H.clone()
    dead = dead_channels(H)
    H[dead, dead] = 1.0
    if alpha > 0:
        H += alpha * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    return H


def robust_cholesky(H: torch.Tensor, alpha: float, name: str = "?", retries: int = 4) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Damp ``H`` with ``alpha`` and take its lower Cholesky factor; on failure retry with 10× damping.

    Returns ``(L, H_damped, alpha_used)``. ``alpha == 0`` first tries the undamped matrix and then
    starts the retries at 1e-6. Raises ``HessianError`` naming the layer when every retry fails.
    """
    a = alpha
    for _ in range(retries + 1):
        Hd = damp(H, a)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            return L, Hd, a
        a = a * 10 if a > 0 else 1e-6
    raise HessianError(f"layer {name}: Hessian not positive definite after damping up to α={a / 10:g}")


def inverse_hessian(H: torch.Tensor, alpha: float, name: str = "?") -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_damped, H_damped⁻¹)`` via Cholesky (the explicit inverse is needed by the update formulas)."""
    L, Hd, _ = robust_cholesky(H, alpha, name)
    return Hd, torch.cholesky_inverse(L)
