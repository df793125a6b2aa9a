"""The memory levers of issue 15 keep every result bit for bit: one running Gram per shared input,
statistics released after each solve, damping without an identity matrix or a damped clone, SparseGPT's
inverse factor and LIAR's system built and factored in their own storage. Each is compared with the
formula it replaced (written out here), with ``torch.equal``."""
import torch

from fxprune.calibration import BlockOp, Stat, StatsRequest, run_blocks
from fxprune.calibration.layerwise import calibrate_whole
from fxprune.calibration.observers import Accumulation, Statistics
from fxprune.linalg import LinAlgError, cholesky_damped, cholesky_damped_inplace, robust_cholesky
from fxprune.models.tiny import tiny_model
from fxprune.passes.reconstruct.liar import liar_coefficients
from fxprune.sparsity.methods import LayerStats
from fxprune.sparsity.methods.sparsegpt import inverse_factor_of, upper_inverse_factor

ATT = "model.layers.0.self_attn."
MLP = "model.layers.0.mlp."


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return [{"input_ids": torch.randint(0, 128, (2, 10), generator=g), "attention_mask": mask} for _ in range(n)]


def _spd(d, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3 * d, d, generator=g, dtype=torch.float64)
    X[:, list(dead)] = 0
    return X.T @ X


def test_shared_inputs_hold_one_running_gram_with_the_bits_of_separate_ones():
    m = tiny_model("llama", num_hidden_layers=2)
    names = [ATT + p for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + [MLP + p for p in ("gate_proj", "up_proj", "down_proj")]
    for acc in Accumulation:
        stats = [Stat.INPUT_GRAM, Stat.INPUT_SUM, Stat.INPUT_SQ]
        together = calibrate_whole(m, _batches(), StatsRequest.for_modules(names, stats, accumulation=acc), progress=False)
        for n in names:  # one module per collector: nothing shared
            alone = calibrate_whole(m, _batches(), StatsRequest.for_modules([n], stats, accumulation=acc), progress=False)[n]
            for key in ("gram", "input_sum", "input_sq"):
                assert torch.equal(getattr(together[n], key), getattr(alone, key)), (acc, n, key)
        assert together[ATT + "q_proj"].gram is together[ATT + "k_proj"].gram is together[ATT + "v_proj"].gram
        assert together[MLP + "gate_proj"].gram is together[MLP + "up_proj"].gram
        assert together[ATT + "o_proj"].gram is not together[ATT + "q_proj"].gram


def test_a_shared_running_sum_is_never_changed_under_an_observer_that_saw_another_input():
    """q and k share a Gram until k sees a different tensor: q's sum must not take k's batch."""
    from fxprune.calibration.observers import StatsCollector
    lin = torch.nn.ModuleDict({"q": torch.nn.Linear(4, 4), "k": torch.nn.Linear(4, 4)})
    req = StatsRequest.for_modules(["q", "k"], [Stat.INPUT_GRAM])
    x1, x2, x3 = (torch.randn(5, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))
    with StatsCollector(lin, req) as col:
        col.set_token_mask(None)
        lin["q"](x1), lin["k"](x1)
        col.set_token_mask(None)
        lin["q"](x2), lin["k"](x3)
    st = col.result()
    assert torch.equal(st["q"].gram, x1.double().T @ x1.double() + x2.double().T @ x2.double())
    assert torch.equal(st["k"].gram, x1.double().T @ x1.double() + x3.double().T @ x3.double())


def test_cholesky_damped_leaves_its_matrix_as_given_and_matches_the_damped_clone():
    A = _spd(40)
    A[0, 0] = -A[0, 0]  # indefinite: the first tries fail, damping grows
    before = A.clone()
    for alpha in (0.01, 0.0):
        n = 40
        try:
            L, lam = cholesky_damped(A, alpha, n_damped=n)
        except LinAlgError:
            L = None
        assert torch.equal(A, before)
        if L is not None:
            D = before.clone()
            D[range(n), range(n)] += lam
            assert torch.equal(L, torch.linalg.cholesky(D))
    L, lam = cholesky_damped(_spd(30), 0.01, n_damped=20)
    D = _spd(30)
    D[range(20), range(20)] += lam
    assert torch.equal(L, torch.linalg.cholesky(D))


def _old_robust(H, alpha):
    """The formula ``robust_cholesky`` replaced: clones, a damped clone per try, ``H + lam * eye``."""
    H = H.clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    lam = alpha * torch.diagonal(H).mean()
    D = H.clone()
    D[range(len(H)), range(len(H))] += lam
    return torch.linalg.cholesky(D), H + lam * torch.eye(len(H), dtype=H.dtype)


def test_robust_cholesky_and_sparsegpts_inverse_factor_are_the_bits_of_the_old_formulas():
    for dtype in (torch.float32, torch.float64):
        H = _spd(64, dead=(3, 17)).to(dtype)
        L0, Hd0 = _old_robust(H, 0.01)
        L, Hd, _ = robust_cholesky(H, 0.01)
        assert torch.equal(L, L0) and torch.equal(Hd, Hd0)
        L2, dead, _, _ = cholesky_damped_inplace(lambda: H.clone(), 0.01)
        assert torch.equal(L2, L0) and dead.nonzero().flatten().tolist() == [3, 17]
        U0 = torch.linalg.cholesky(torch.cholesky_inverse(L0), upper=True)
        assert torch.equal(upper_inverse_factor(H, 0.01), U0)
    st = LayerStats("x", _spd(1100, dead=(5,)), 77)  # > 1024 rows: the Hessian is built in two slabs
    H32 = st.hessian(dtype=torch.float32)
    assert torch.equal(H32, st.hessian().float())
    U, dead = inverse_factor_of(st, 0.01)
    L0, _ = _old_robust(st.hessian().float(), 0.01)
    assert torch.equal(U, torch.linalg.cholesky(torch.cholesky_inverse(L0), upper=True)) and bool(dead[5])


def test_liar_system_built_in_slabs_is_the_old_one():
    d = 1100
    G = _spd(d)
    s = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    keep = torch.rand(d, generator=torch.Generator().manual_seed(2)) < 0.8
    Q, p = liar_coefficients(G, s, 3 * d, keep, 0.01)
    R, P = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    r = len(R)
    A = torch.empty(r + 1, r + 1, dtype=torch.float64)
    A[:r, :r] = G[R][:, R]
    A[:r, r] = A[r, :r] = s[R]
    A[r, r] = float(3 * d)
    B = torch.cat([G[R][:, P], s[P].unsqueeze(0)], 0)
    lam = 0.01 * torch.diagonal(A)[:r].mean().clamp_min(1e-12)
    D = A.clone()
    D[range(r), range(r)] += lam
    Z = torch.cholesky_solve(B, torch.linalg.cholesky(D))
    assert torch.equal(Q, Z[:r]) and torch.equal(p, Z[r])


class _Read(BlockOp):
    name, modifies = "read", False

    def __init__(self, release=False):
        self.release, self.seen = release, []

    def request(self, ctx):
        return StatsRequest.for_modules([f"{ctx.name}.mlp.up_proj", f"{ctx.name}.mlp.gate_proj"], [Stat.INPUT_GRAM])

    def apply(self, ctx, stats):
        self.seen.append((ctx.owns_stats, sorted(stats)))
        if self.release and ctx.owns_stats:
            stats.release(f"{ctx.name}.mlp.up_proj")


class _After(BlockOp):
    name, modifies, reads_stats = "after", False, False

    def __init__(self):
        self.seen = []

    def apply(self, ctx, stats):
        self.seen.append(len(stats))


def test_statistics_go_after_the_last_op_that_reads_them():
    m = tiny_model("llama", num_hidden_layers=2)
    first, last, after = _Read(), _Read(release=True), _After()
    run_blocks(m, _batches(1), [first, last, after], progress=False)
    names = lambda i: sorted(f"model.layers.{i}.mlp.{p}" for p in ("gate_proj", "up_proj"))  # noqa: E731
    assert first.seen == [(False, names(0)), (False, names(1))]  # not the last reader: may not release
    assert last.seen == [(True, names(0)), (True, names(1))]
    assert after.seen == [0, 0]  # released before the op that reads none
    st = Statistics({"a": 1, "b": 2})
    st.release("a")
    assert list(st) == ["b"]


def test_releasing_statistics_early_changes_no_tensor(monkeypatch):
    """A structured (LIAR) and a SparseGPT prune with and without the early releases: the same bits, and
    the releases happen (the consumers' Grams in RemoveUnits, each layer's in Sparsify)."""
    import fxprune
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(3))
    for recipe in ("goa-liar-ffn-global-20", "sparsegpt-2of4"):
        out, released = [], []
        for on in (False, True):
            real = Statistics.release
            monkeypatch.setattr(Statistics, "release",
                                (lambda self, k: (released.append(k), real(self, k))) if on else (lambda self, k: None))
            m = tiny_model("llama", num_hidden_layers=2)
            fxprune.prune(m, recipe, ids)
            out.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        assert out[0].keys() == out[1].keys() and all(torch.equal(out[0][k], out[1][k]) for k in out[0]), recipe
        assert any(k.endswith("mlp.down_proj") for k in released), (recipe, released)
