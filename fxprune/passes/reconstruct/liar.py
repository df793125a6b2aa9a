"""LIAR (Wang et al., arXiv 2407.13331) and FLAP bias compensation.

LIAR predicts the removed inputs from the kept ones by least squares with an intercept,
``x_P ~ Q^T x_R + p``, from the augmented Gram ``[[G_RR, s_R], [s_R^T, N]] [Q; p^T] = [G_RP; s_P^T]``
(ridge ``lambda = alpha * mean(diag G_RR)`` on the kept block only, never on the intercept), and folds
it into the consumer: ``W_R += W_P Q^T``, ``b += W_P p``. FLAP's bias compensation is the special
case ``Q = 0``, ``p = E[x_P]``.
"""
import torch

from ...linalg import solve_damped
from . import ConsumerLayer, Reconstructor, Stat, register


def kept_gram(G, s, n, keep, rows: int = 1024) -> torch.Tensor:
    """``[[G_RR, s_R], [s_R^T, N]]``: the Gram of ``[x_R 1]`` over the calibration tokens, fp64, built
    ``rows`` rows at a time straight into its own storage (no ``G[R]`` copy of the kept rows)."""
    R = torch.nonzero(keep).flatten().to(G.device)
    r = len(R)
    A = torch.empty(r + 1, r + 1, dtype=torch.float64, device=G.device)
    for a in range(0, r, rows):
        b = min(a + rows, r)
        A[a:b, :r] = G[R[a:b]][:, R]
    A[:r, r] = A[r, :r] = s[R]
    A[r, r] = float(n)
    return A


def liar_system(G, s, n, keep) -> tuple[torch.Tensor, torch.Tensor]:
    """LIAR's augmented system ``(A, B)`` (module docstring), fp64: ``A`` is ``kept_gram``."""
    R, P = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    B = torch.cat([G[:, P][R], s[P].unsqueeze(0)], 0)
    return kept_gram(G, s, n, keep), B


def liar_coefficients(G, s, n, keep, alpha):
    """``(Q, p)`` with ``x_P ~ Q^T x_R + p``: Q is (|R|, |P|), p is (|P|,). The system is factored without
    a damped clone (``linalg.solve_damped``): it and its factor are the only (|R|+1)^2 matrices alive."""
    A, B = liar_system(G, s, n, keep)
    return _solve(A, B, alpha)


def _solve(A, B, alpha):
    r = A.shape[0] - 1
    Z = solve_damped(A, B, r, alpha)
    return Z[:r], Z[r]


@register
class Liar(Reconstructor):
    name = "liar"
    needs = frozenset({Stat.INPUT_GRAM, Stat.INPUT_SUM})

    def fold(self, layer: ConsumerLayer, keep, stats, damping, release: bool = False):
        if bool(keep.all()):
            return
        st = stats[layer.name]
        A, B = liar_system(st.gram.double(), st.input_sum.double(), st.count, keep)
        if release:  # the Gram goes before the factorisation (for a 7B down_proj: 0.97 GB of the peak)
            stats.release(layer.name)
        del st
        Q, p = _solve(A, B, damping)
        del A, B
        _apply(layer, keep, Q, p)


@register
class FlapBias(Reconstructor):
    name = "flap_bias"
    needs = frozenset({Stat.INPUT_SUM})

    def fold(self, layer: ConsumerLayer, keep, stats, damping, release: bool = False):
        if bool(keep.all()):
            return
        st = stats[layer.name]
        P = torch.nonzero(~keep).flatten()
        mean_p = (st.input_sum.double() / st.count)[P]
        _apply(layer, keep, None, mean_p)


@torch.no_grad()
def _apply(layer: ConsumerLayer, keep, Q, p):
    W = layer.W
    R, P = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    WP = W[:, P].double()
    if Q is not None:
        W[:, R] += (WP @ Q.T).to(W.dtype)
    b = layer.bias(create=True)
    b += (WP @ p).to(b.dtype)
