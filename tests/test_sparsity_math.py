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


# ---- the exact solve and the sweep of the multiple-removal kernel (issue 17) ----

from fxprune.sparsity.methods import mrp as _mrp  # noqa: E402


def _refit(W, H, mask):
    """Brute force, row by row in float64: ``w_R = H_RR⁻¹ (H wᵀ)_R``, zeros on the mask."""
    W, H = W.double(), H.double()
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        R = ~mask[r]
        if bool(R.any()):
            out[r, R] = torch.linalg.solve(H[R][:, R], (H @ W[r])[R])
    return out


def _correlated_masks(rows, d, seed, p_follow=0.8, ratio=0.5):
    """Masks that mostly follow a few shared patterns (as real layers' masks do), plus an empty and
    a fully pruned row."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.rand(3, d, generator=g) < ratio
    who = torch.randint(0, 3, (rows,), generator=g)
    follow = torch.rand(rows, d, generator=g) < p_follow
    mask = torch.where(follow, bases[who], torch.rand(rows, d, generator=g) < ratio)
    mask[0] = False
    mask[1] = True
    return mask


@pytest.mark.parametrize("form", ["R", "P", "auto"])
@pytest.mark.parametrize("row_chunk", [1, 5, 64])
def test_exact_solve_equals_brute_force_refit_with_unequal_counts(form, row_chunk):
    W, X = _layer(11, d_out=24, d_in=40)
    H = 2 * X @ X.T
    mask = _correlated_masks(24, 40, 3)          # counts differ per row: chunks are padded
    new = optimal_update(W, H, mask, Hinv=torch.linalg.inv(H), row_chunk=row_chunk, form=form)
    torch.testing.assert_close(new, _refit(W, H, mask), rtol=1e-9, atol=1e-9)
    assert bool((new[mask] == 0).all())


def test_joint_removal_equals_the_update_formula_on_the_block():
    g = torch.Generator().manual_seed(21)
    B = torch.randn(16, 16, generator=g, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(B @ B.T + 0.5 * torch.eye(16, dtype=torch.float64)), upper=True)
    w = torch.randn(7, 16, generator=g, dtype=torch.float64)
    pm = torch.rand(7, 16, generator=g) < torch.linspace(0.1, 0.9, 7).unsqueeze(1)   # |P| < |R| and |P| > |R|
    A = U.T @ U
    e = _mrp._joint_removal(w, U, pm)
    for r in range(7):
        P = torch.nonzero(pm[r]).squeeze(1)
        ref = torch.linalg.solve(A[P][:, P], w[r, P]) @ U[:, P].T          # w_P A_PP⁻¹ U[:, P]ᵀ
        torch.testing.assert_close(e[r], ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(4, 8), Unstructured(0.5), Unstructured(0.6, "layer")],
                         ids=["2:4", "4:8", "50row", "60layer"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mrp_final_weights_are_the_exact_refit_of_its_mask(pattern, dtype):
    W, X = _layer(13, d_out=20, d_in=48)
    acc = _acc(X)
    res = prune_weight(W.float(), acc, pattern, MRPConfig(blocksize=16, solve_dtype=dtype))
    _, Hd, _ = robust_cholesky(acc.hessian().double(), 0.01)
    ref = _refit(W.float().double(), Hd, res.mask)
    tol = 1e-6 if dtype == "float64" else 2e-4   # the kernel returns W's dtype (float32 here)
    torch.testing.assert_close(res.weight.double(), ref, rtol=tol, atol=tol)


def _reference_nm_sweep(W, U, n, m, blocksize):
    """The N:M sweep written out plainly: per group, per row, every pattern's loss by a dense solve."""
    W = W.clone()
    rows, cols = W.shape
    pats = nm_patterns(n, m)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, U1, Err1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2], torch.zeros(rows, i2 - i1, dtype=W.dtype)
        for g in range(0, i2 - i1, m):
            ug = U1[g:g + m, g:g + m]
            A = ug.T @ ug
            for r in range(rows):
                losses = []
                for p in pats:
                    P = torch.nonzero(p).squeeze(1)
                    losses.append(float(W1[r, g + P] @ torch.linalg.solve(A[P][:, P], W1[r, g + P])))
                best = pats[min(range(len(pats)), key=losses.__getitem__)]
                P = torch.nonzero(best).squeeze(1)
                e = torch.linalg.solve(A[P][:, P], W1[r, g + P]) @ ug[:, P].T
                W1[r, g:] -= e @ U1[g:g + m, g:]
                W1[r, g:g + m][best] = 0
                mask[r, i1 + g:i1 + g + m] = best
                Err1[r, g:g + m] = e
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return mask, W


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)], ids=["2:4", "4:8"])
def test_nm_sweep_picks_the_exhaustive_minimum_of_every_group(nm):
    n, m = nm
    W, X = _layer(14, d_out=6, d_in=32)
    H = 2 * X @ X.T / X.shape[1] + 0.01 * torch.eye(32, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    mask, swept = _mrp.adaptive_mask(W, U, NM(n, m), blocksize=16)
    ref_mask, ref_swept = _reference_nm_sweep(W, U, n, m, 16)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(swept, ref_swept, rtol=1e-9, atol=1e-9)


def test_factorisation_is_shared_between_linears_of_one_input_and_refreshed_on_change():
    W, X = _layer(15, d_out=8, d_in=24)
    acc = _acc(X)
    cfg = MRPConfig(blocksize=8, solve_dtype="float64")
    _mrp._factor_cache.clear()
    a = prune_weight(W.float(), acc, NM(2, 4), cfg)
    cached = _mrp._factor_cache["entry"][2]
    twin = LayerStats("twin", acc.gram.clone(), acc.n)          # q/k/v: equal Gram matrices, distinct tensors
    b = prune_weight(W.float(), twin, NM(2, 4), cfg)
    assert _mrp._factor_cache["entry"][2] is cached              # cache hit
    assert torch.equal(a.weight, b.weight)
    acc.gram += X[:, :16] @ X[:, :16].T                          # Gram changes in place: factors recomputed
    c = prune_weight(W.float(), acc, NM(2, 4), cfg)
    assert _mrp._factor_cache["entry"][2] is not cached
    _mrp._factor_cache.clear()
    d = prune_weight(W.float(), LayerStats("fresh", acc.gram.clone(), acc.n), NM(2, 4), cfg)
    torch.testing.assert_close(c.weight, d.weight)
    assert not torch.equal(c.weight, a.weight)


def _exact_loss(w, H, P):
    """``min ½ δ H δᵀ`` over ``δ`` with ``(w + δ)_P = 0``, by a dense refit of the kept weights."""
    R = torch.ones(len(w), dtype=torch.bool)
    R[list(P)] = False
    new = torch.zeros_like(w)
    if bool(R.any()):
        new[R] = torch.linalg.solve(H[R][:, R], (H @ w)[R])
    d = w - new
    return float(0.5 * d @ H @ d)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)], ids=["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("selection", ["adaptive", "oneshot"])
def test_one_group_layer_reaches_the_brute_force_optimum_over_all_masks(nm, selection):
    """With one group of M columns the kernel's promise is the global optimum: the mask with the lowest
    exact loss among all C(M,N) masks, and the exact weights for it."""
    n, m = nm
    W, X = _layer(16, d_out=10, d_in=m, n=64)
    stats = _acc(X)
    _mrp._factor_cache.clear()
    res = prune_weight(W, stats, NM(n, m), MRPConfig(solve_dtype="float64", mask_selection=selection))
    _, Hd, _ = robust_cholesky(stats.hessian(), 0.01)
    for r in range(W.shape[0]):
        losses = {P: _exact_loss(W[r], Hd, P) for P in itertools.combinations(range(m), n)}
        best = min(losses.values())
        got = tuple(torch.nonzero(res.mask[r]).squeeze(1).tolist())
        assert losses[got] <= best * (1 + 1e-9) + 1e-12, (r, got, losses[got], best)
        d = W[r] - res.weight[r]
        torch.testing.assert_close(float(0.5 * d @ Hd @ d), best, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("pattern", [NM(2, 4), Unstructured(0.5), Unstructured(0.7, "layer")], ids=["2:4", "50row", "70layer"])
def test_exact_solve_large_systems_and_padding_match_the_refit(pattern):
    """d_in = 300: systems above 128 (per-row column gathers) and below (one batched gather) in one
    call, unequal counts per row (70% per layer) padded with sentinel columns."""
    W, X = _layer(17, d_out=12, d_in=300, n=600)
    stats = _acc(X)
    _mrp._factor_cache.clear()
    res = prune_weight(W, stats, pattern, MRPConfig(solve_dtype="float64", row_chunk=5))
    assert mask_conforms(res.mask, pattern)
    _, Hd, _ = robust_cholesky(stats.hessian(), 0.01)
    torch.testing.assert_close(res.weight, _refit(W, Hd, res.mask), rtol=1e-7, atol=1e-9)


def test_layer_loss_not_worse_than_sparsegpt_with_dead_channels_and_few_tokens():
    """A rank-deficient Gram (fewer tokens than inputs) with dead input channels: both kernels stay
    finite, dead columns are zero, and the multiple-removal layer loss is not above SparseGPT's."""
    W, X = _layer(18, d_out=16, d_in=64, n=40)
    X[[3, 17, 40]] = 0
    stats = _acc(X)
    for pattern in (NM(2, 4), Unstructured(0.6)):
        _mrp._factor_cache.clear()
        mr = prune_weight(W.float(), stats, pattern, MRPConfig(blocksize=16))
        sg = prune_weight(W.float(), stats, pattern, SparseGPTConfig(blocksize=16))
        assert bool(torch.isfinite(mr.weight).all()) and mask_conforms(mr.mask, pattern)
        assert bool((mr.weight[:, [3, 17, 40]] == 0).all())
        assert _layer_loss(W, mr.weight.double(), X) <= _layer_loss(W, sg.weight.double(), X) * 1.0001


# ---- the iterative exact solve (issue 17: preconditioned conjugate gradients on all rows at once) ----

from fxprune.errors import RecipeError  # noqa: E402
from fxprune.linalg import masked_pcg  # noqa: E402


def _outlier_layer(seed, d_out=24, d_in=96, n=400):
    """Activations with a few massive channels and correlated columns, as in LLM layers: the damped
    Hessian is ill-conditioned (the case where an iterative solve could stop short)."""
    W, X = _layer(seed, d_out=d_out, d_in=d_in, n=n)
    X[[5, 50]] *= 40.0
    return W, X


def test_masked_pcg_equals_the_direct_solve_and_reports_rows_it_did_not_finish():
    W, X = _outlier_layer(21)
    H = 2 * X @ X.T / X.shape[1]
    _, Hd, _ = robust_cholesky(H, 0.01)
    Hinv = torch.linalg.inv(Hd)
    assert float(torch.linalg.cond(Hd)) > 1e3
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    B = W @ Hd
    X_, conv = masked_pcg(Hd, Hinv, B, ~mask, torch.zeros_like(W), tol=1e-12, max_iter=500)
    assert bool(conv.all())
    ref = optimal_update(W, Hd, mask)
    torch.testing.assert_close(X_, ref * ~mask, rtol=1e-8, atol=1e-10)
    # two iterations are not enough for every row: those are reported, and refit_pcg solves them directly
    _, conv2 = masked_pcg(Hd, Hinv, B, ~mask, torch.zeros_like(W), tol=1e-12, max_iter=2)
    assert not bool(conv2.all())
    torch.testing.assert_close(_mrp.refit_pcg(W, Hd, Hinv, mask, torch.zeros_like(W), 1e-12, 2), ref,
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(4, 8), Unstructured(0.5), Unstructured(0.6, "layer")],
                         ids=["2:4", "4:8", "50row", "60layer"])
def test_pcg_and_direct_solvers_give_the_same_layer_in_float32(pattern):
    """The default solver (pcg, float32, tolerance 1e-6) against one Cholesky per row: the same mask
    (the sweep is shared), weights equal to float32 accuracy and no larger layer loss beyond 1e-5."""
    W, X = _outlier_layer(22, d_in=192)
    stats = _acc(X)
    _mrp._factor_cache.clear()
    it = prune_weight(W.float(), stats, pattern, MRPConfig(blocksize=32))
    _mrp._factor_cache.clear()
    di = prune_weight(W.float(), stats, pattern, MRPConfig(blocksize=32, solver="direct"))
    assert torch.equal(it.mask, di.mask)
    torch.testing.assert_close(it.weight, di.weight, rtol=1e-3, atol=1e-4)
    assert _layer_loss(W, it.weight.double(), X) <= _layer_loss(W, di.weight.double(), X) * (1 + 1e-5)


def test_solver_options_are_checked():
    with pytest.raises(RecipeError, match="solver"):
        MRPConfig(solver="cg")
    with pytest.raises(RecipeError, match="pcg_tol"):
        MRPConfig(pcg_tol=0.0)
