"""LIAR (Wang et al., arXiv 2407.13331) and FLAP bias compensation.

LIAR predicts the removed inputs from the kept ones by least squares with an intercept,
``x_P ~ Q^T x_R + p``, from the augmented Gram ``[[G_RR, s_R], [s_R^T, N]] [Q; p^T] = [G_RP; s_P^T]``
(ridge ``lambda = alpha * mean(diag G_RR)`` on the kept block only, never on the intercept), and folds
it into the consumer: ``W_R += W_P Q^T``, ``b += W_P p``. FLAP's bias compensation is the special
case ``Q = 0``, ``p = E[x_P]``.
"""
import torch

from . import ConsumerLayer, Reconstructor, Stat, register


def solve_damped(A: torch.Tensor, B: torch.Tensor, n_damped: int, alpha: float,
                 prior: torch.Tensor | None = None) -> torch.Tensor:
    """Solve ``(A + lambda I_d) Z = B + lambda P_d`` by Cholesky, damping the first ``n_damped``
    diagonal entries (ridge towards ``prior``'s first rows, or towards 0 without one); retries with
    10x damping when the factorisation fails."""
    diag = torch.diagonal(A)[:n_damped]
    lam = alpha * diag.mean().clamp_min(1e-12) if n_damped else A.new_tensor(0.0)
    for _ in range(6):
        D = A.clone()
        idx = torch.arange(n_damped)
        D[idx, idx] += lam
        L, info = torch.linalg.cholesky_ex(D)
        if int(info) == 0:
            rhs = B if prior is None else B + torch.cat([lam * prior[:n_damped], 0 * prior[n_damped:]])
            return torch.cholesky_solve(rhs, L)
        lam = lam * 10 if lam > 0 else diag.mean().clamp_min(1e-12) * 1e-6
    return torch.linalg.lstsq(A, B).solution


def liar_coefficients(G, s, n, keep, alpha):
    """``(Q, p)`` with ``x_P ~ Q^T x_R + p``: Q is (|R|, |P|), p is (|P|,)."""
    R, P = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    r = len(R)
    A = torch.empty(r + 1, r + 1, dtype=torch.float64)
    A[:r, :r] = G[R][:, R]
    A[:r, r] = A[r, :r] = s[R]
    A[r, r] = float(n)
    B = torch.cat([G[R][:, P], s[P].unsqueeze(0)], 0)
    Z = solve_damped(A, B, r, alpha)
    return Z[:r], Z[r]


@register
class Liar(Reconstructor):
    name = "liar"
    needs = frozenset({Stat.INPUT_GRAM, Stat.INPUT_SUM})

    def fold(self, layer: ConsumerLayer, keep, stats, damping):
        if bool(keep.all()):
            return
        st = stats[layer.name]
        Q, p = liar_coefficients(st.gram.double(), st.input_sum.double(), st.count, keep, damping)
        _apply(layer, keep, Q, p)


@register
class FlapBias(Reconstructor):
    name = "flap_bias"
    needs = frozenset({Stat.INPUT_SUM})

    def fold(self, layer: ConsumerLayer, keep, stats, damping):
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
