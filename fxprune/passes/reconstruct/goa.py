"""GOA two-step reconstruction (reading of Li, Dong, Lei, CPAL 2025; not verified against code).

Step 1 (before removal) folds the removed units into the kept ones exactly as LIAR. Step 2 (after
removal) refits each consumer on the *pruned* stream's inputs against the *dense* model's outputs:
``[W' b'] = argmin ||[X_pruned 1] [W' b']^T - Y_dense||^2 + lambda ||W' - W_1||^2``, layer by layer,
with ``W_1`` the step-1 weights. The ridge pulls towards ``W_1``, not towards 0: with outlier
channels (attention-sink tokens) ``lambda = alpha * mean(diag)`` is large for ordinary channels, and
shrinking a whole consumer towards 0 destroyed it (SmolLM2 PPL 258 vs 136 with no reconstruction).
"""
import torch

from . import Stat, register
from ...linalg import solve_damped
from .liar import Liar


@register
class GOATwoStep(Liar):
    name = "goa"
    needs = frozenset({Stat.INPUT_GRAM, Stat.INPUT_SUM})
    refits = True


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """``[x 1]``: ``x`` flattened to (tokens, d) with a column of ones (the bias's input)."""
    x = x.reshape(-1, x.shape[-1])
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)


class RefitAccumulator:
    """Sums ``[x 1]^T [x 1]`` and ``[x 1]^T y`` over calibration tokens for one consumer."""

    def __init__(self):
        self.A = None
        self.C = None

    def add(self, x: torch.Tensor, y: torch.Tensor):
        xa = with_ones(x.double())
        y = y.reshape(-1, y.shape[-1]).double()
        A, C = xa.T @ xa, xa.T @ y
        if self.A is None:
            self.A, self.C = A, C
        else:  # in place: the same sums, no third (d+1)^2 matrix
            self.A += A
            self.C += C

    @torch.no_grad()
    def solve_into(self, layer, damping: float):
        d = self.A.shape[0] - 1
        b0 = layer.bias()
        prior = torch.cat([layer.W.detach().double().T,
                           (b0.detach().double() if b0 is not None else torch.zeros(self.C.shape[1],
                            dtype=torch.float64)).unsqueeze(0)])
        Z = solve_damped(self.A, self.C, d, damping, prior=prior)
        W = layer.W
        W.copy_(Z[:d].T.to(W.dtype))
        b = layer.bias(create=True)
        b.copy_(Z[d].to(b.dtype))
