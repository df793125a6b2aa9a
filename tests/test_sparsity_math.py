"""Numerical invariants of the sparsity solvers on random layers (float64, small)."""
import itertools

import pytest
import torch

from fxprune.sparsity import NM, MRPConfig, SparseGPTConfig, Unstructured, WandaConfig, MagnitudeConfig
from fxprune.linalg import robust_cholesky
from fxprune.sparsity.masks import mask_conforms, nm_patterns
from fxprune.sparsity.methods import LayerStats, prune_weight
from fxprune.sparsity.methods.mrp import nm_group_choice, optimal_update, removal_loss


def _layer(seed=0, d_out=12, d_in=32, n=256):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    X = (torch.randn(d_in, d_in, generator=g, dtype=torch.float64) * 0.5 + torch.eye(d_in, dtype=torch.float64)) @ X
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return W, X


def _acc(X):
    return LayerStats("test", X @ X.T, X.shape[1])  # exact fp64 Gram for the invariants


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("form", ["R", "P"])
def test_update_zeroes_pruned_and_loss_matches_measured_error(seed, form):
    W, X = _layer(seed)
    H = 2 * X @ X.T  # undamped, unnormalised: H = 2XXᵀ
    Hinv = torch.linalg.inv(H)
    g = torch.Generator().manual_seed(100 + seed)
    mask = torch.rand(W.shape, generator=g) < 0.5
    Wh = optimal_update(W, H, mask, Hinv=Hinv, form=form)
    assert bool((Wh[mask] == 0).all())
    for r in range(W.shape[0]):
        P = torch.nonzero(mask[r]).squeeze(1)
        predicted = removal_loss(W[r], Hinv, P)
        measured = ((W[r] - Wh[r]) @ X).pow(2).sum()  # ||(w - ŵ) X||²
        torch.testing.assert_close(predicted, measured, rtol=1e-7, atol=1e-9)


def test_r_and_p_forms_agree_and_are_optimal():
    W, X = _layer(5, d_out=6, d_in=16)
    H = 2 * X @ X.T
    Hinv = torch.linalg.inv(H)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    a = optimal_update(W, H, mask, Hinv=Hinv, form="R")
    b = optimal_update(W, H, mask, Hinv=Hinv, form="P")
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # least squares on the kept columns gives the same answer
    for r in range(W.shape[0]):
        R = ~mask[r]
        sol = torch.linalg.lstsq(X[R].T, (W[r] @ X).unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(a[r, R], sol, rtol=1e-6, atol=1e-8)


def test_unequal_row_counts_are_batched_with_padding():
    W, X = _layer(2, d_out=9, d_in=20)
    H = 2 * X @ X.T
    mask = torch.zeros(W.shape, dtype=torch.bool)
    for r in range(9):
        mask[r, : r + 1] = True  # 1..9 pruned per row
    batched = optimal_update(W, H, mask, row_chunk=4)
    single = torch.cat([optimal_update(W[r:r + 1], H, mask[r:r + 1]) for r in range(9)])
    torch.testing.assert_close(batched, single)


def _layer_loss(W, Wh, X):
    return float(((W - Wh) @ X).pow(2).sum())


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(4, 8), Unstructured(0.5), Unstructured(0.6, "layer")],
                         ids=["2:4", "4:8", "50row", "60layer"])
@pytest.mark.parametrize("seed", range(3))
def test_multiple_removal_never_worse_than_sparsegpt_on_same_mask(pattern, seed):
    W, X = _layer(seed, d_out=16, d_in=64)
    acc = _acc(X)
    sg = prune_weight(W.float(), acc, pattern, SparseGPTConfig(blocksize=16, percdamp=0.01))
    H = acc.hessian().double()
    _, Hd, _ = robust_cholesky(H, 0.01)
    mr = optimal_update(W, Hd, sg.mask)
    # optimality is for the damped objective ½ δw H_d δwᵀ on which both are solved
    def damped(Wh):
        D = W - Wh.double()
        return float(((D @ Hd) * D).sum())
    assert damped(mr) <= damped(sg.weight) * (1 + 1e-6)
    # and the full method (its own mask) also does not lose on the calibration data
    full = prune_weight(W.float(), acc, pattern, MRPConfig(blocksize=16, solve_dtype="float64"))
    assert _layer_loss(W, full.weight.double(), X) <= _layer_loss(W, sg.weight.double(), X) * 1.0001


def test_nm_group_choice_is_the_brute_force_minimum():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(8, 8, generator=g, dtype=torch.float64)
    A = B @ B.T + 0.1 * torch.eye(8, dtype=torch.float64)
    w = torch.randn(5, 8, generator=g, dtype=torch.float64)
    best, loss = nm_group_choice(w, A, 4, 8)
    assert nm_patterns(4, 8).shape == (70, 8)
    for r in range(5):
        brute = min(removal_loss(w[r], A, torch.tensor(P)) for P in itertools.combinations(range(8), 4))
        torch.testing.assert_close(loss[r], brute)


@pytest.mark.parametrize("cfg", [MagnitudeConfig(), WandaConfig(), SparseGPTConfig(blocksize=16),
                                 MRPConfig(blocksize=16), MRPConfig(mask_selection="oneshot")],
                         ids=["magnitude", "wanda", "sparsegpt", "mrp", "mrp-oneshot"])
@pytest.mark.parametrize("pattern", [NM(2, 4), NM(4, 8), NM(1, 4), Unstructured(0.5), Unstructured(0.7, "layer"),
                                     Unstructured(0.37)], ids=["2:4", "4:8", "1:4", "50row", "70layer", "37row"])
def test_masks_hit_the_pattern_exactly(cfg, pattern):
    W, X = _layer(7, d_out=10, d_in=40)
    res = prune_weight(W.float(), _acc(X), pattern, cfg)
    assert mask_conforms(res.mask, pattern)
    assert bool((res.weight[res.mask] == 0).all())
