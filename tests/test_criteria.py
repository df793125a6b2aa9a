"""Each criterion against a hand computation on a toy FFN and a toy attention."""
import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.calibration import HeadLayout, Stat, StatsRequest, calibrate_whole
from fxprune.models.tiny import tiny_model
from fxprune.passes.criteria import CRITERIA, get_criterion


@pytest.fixture(scope="module")
def setup():
    m = tiny_model("llama")
    a = analyse(m)
    ffn = a.group("model.layers.0.mlp")
    attn = a.group("model.layers.1.self_attn:q_per_kv")
    req = StatsRequest({"model.layers.0.mlp.down_proj": {Stat.INPUT_SQ, Stat.INPUT_SUM, Stat.INPUT_GRAM},
                        "model.layers.0.mlp.gate_proj": {Stat.INPUT_SQ}, "model.layers.0.mlp.up_proj": {Stat.INPUT_SQ},
                        "model.layers.1.self_attn.o_proj": {Stat.INPUT_SQ, Stat.INPUT_SUM, Stat.HEAD_GRAM}},
                       heads={"model.layers.1.self_attn.o_proj": HeadLayout(4, 16)})
    ids = torch.randint(5, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    stats = calibrate_whole(m, [{"input_ids": ids}], req, progress=False)
    acts = {}
    h = m.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda mod, a: acts.__setitem__("x", a[0]))
    with torch.no_grad():
        m(input_ids=ids)
    h.remove()
    return m, ffn, attn, stats, acts["x"].reshape(-1, 96).double()


def test_ffn_criteria_by_hand(setup):
    m, ffn, _, stats, X = setup
    mlp = m.model.layers[0].mlp
    Wd = mlp.down_proj.weight.detach().double()
    Wg, Wu = mlp.gate_proj.weight.detach().double(), mlp.up_proj.weight.detach().double()
    want = {
        "magnitude": (Wg.pow(2).sum(1) + Wu.pow(2).sum(1) + Wd.pow(2).sum(0)).sqrt(),
        "wanda_sp": Wd.abs().sum(0) * X.pow(2).sum(0).sqrt(),
        "flap": X.var(0, unbiased=False) * Wd.pow(2).sum(0),
        "goa": Wd.pow(2).sum(0) * X.pow(2).sum(0),
    }
    for name, w in want.items():
        got = get_criterion(name).score(ffn, m, stats)
        assert torch.allclose(got, w, rtol=1e-4, atol=1e-8), name


def test_head_criteria_sum_channels_of_a_unit(setup):
    m, _, attn, stats, _ = setup
    # q_per_kv unit u = q heads {u, 2 + u}: o_proj columns 16u..16u+15 and 32+16u..32+16u+15
    cols = [list(range(16 * u, 16 * u + 16)) + list(range(32 + 16 * u, 48 + 16 * u)) for u in range(2)]
    st = stats["model.layers.1.self_attn.o_proj"]
    Wo = m.model.layers[1].self_attn.o_proj.weight.detach().double()
    flap = torch.tensor([(st.variance.double()[c] * Wo[:, c].pow(2).sum(0)).sum() for c in cols])
    assert torch.allclose(get_criterion("flap").score(attn, m, stats), flap, rtol=1e-5)


def test_goa_head_greedy_removes_the_cheapest_unit_first(setup):
    m, _, attn, stats, _ = setup
    C = stats["model.layers.1.self_attn.o_proj"].head_gram.double()
    cost = [C[[u, 2 + u]][:, [u, 2 + u]].sum() for u in range(2)]
    scores = get_criterion("goa").score(attn, m, stats)
    assert int(scores.argmin()) == int(torch.tensor(cost).argmin())


def test_random_is_a_seeded_control(setup):
    m, ffn, _, stats, _ = setup
    a = get_criterion("random").score(ffn, m, stats)
    assert torch.equal(a, get_criterion("random").score(ffn, m, stats))
    assert set(CRITERIA) >= {"magnitude", "wanda_sp", "flap", "goa", "random", "olica", "obs"}


def test_olica_ffn_score_by_hand(setup):
    m, ffn, _, stats, X = setup
    mlp = m.model.layers[0].mlp
    Wd = mlp.down_proj.weight.detach().double()
    Wg, Wu = mlp.gate_proj.weight.detach().double(), mlp.up_proj.weight.detach().double()
    s_in = stats["model.layers.0.mlp.gate_proj"].second_moment.double().sqrt()
    want = (Wu * s_in).norm(dim=1) + (Wg * s_in).norm(dim=1) + Wd.norm(dim=0) * X.pow(2).mean(0).sqrt()
    assert torch.allclose(get_criterion("olica").score(ffn, m, stats), want, rtol=1e-5)


def _augmented_inverse(X, alpha=0.01):
    G = X.T @ X
    n = G.shape[0]
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    H = Xa.T @ Xa
    H[range(n), range(n)] += alpha * torch.diagonal(G).mean()
    return torch.linalg.inv(H)


def test_obs_removes_first_the_channel_liar_compensates_best(setup):
    m, ffn, _, stats, X = setup
    Wd = m.model.layers[0].mlp.down_proj.weight.detach().double()
    Hinv = _augmented_inverse(X)
    cost = Wd.pow(2).sum(0) / torch.diagonal(Hinv)[:-1]  # error left after optimal compensation
    scores = get_criterion("obs").score(ffn, m, stats)
    first8 = set(torch.argsort(scores)[:8].tolist())  # one greedy round removes 8 channels
    assert first8 == set(torch.argsort(cost)[:8].tolist())
    # and the greedy set is better compensated by LIAR than magnitude's at equal size
    from fxprune.passes.reconstruct.liar import liar_coefficients
    st = stats["model.layers.0.mlp.down_proj"]

    def liar_error(sc, k=48):
        keep = torch.zeros(96, dtype=torch.bool)
        keep[torch.argsort(sc, descending=True)[:k]] = True
        Q, p = liar_coefficients(st.gram.double(), st.input_sum.double(), st.count, keep, 0.01)
        R, P = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
        return float(((X[:, P] - X[:, R] @ Q - p) @ Wd[:, P].T).pow(2).sum())
    assert liar_error(scores) < liar_error(get_criterion("magnitude").score(ffn, m, stats))
