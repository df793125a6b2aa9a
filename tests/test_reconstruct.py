"""Reconstruction lowers the error it minimises; FLAP bias is LIAR with Q = 0; added biases persist."""
import copy

import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.calibration import Stat, StatsRequest, calibrate_whole
from fxprune.checkpoint import load_pruned, save_pruned
from fxprune.models.tiny import tiny_model
from fxprune.passes.reconstruct import ConsumerLayer, get_reconstructor
from fxprune.passes.reconstruct.goa import RefitAccumulator
from fxprune.passes.reconstruct.liar import liar_coefficients
from fxprune.surgery import _keep_masks, prune

CASES = [("llama", "model.layers.1.self_attn:q_per_kv", "model.layers.1.self_attn.o_proj"),
         ("llama", "model.layers.0.mlp", "model.layers.0.mlp.down_proj"),
         ("mamba", "backbone.layers.1.mixer", "backbone.layers.1.mixer.out_proj"),
         ("gpt2", "transformer.h.0.attn", "transformer.h.0.attn.c_proj")]


def _setup(family, gid, consumer):
    m = tiny_model(family)
    a = analyse(m)
    g = a.group(gid)
    keep_units = list(range(0, g.units, 2))
    member = next(x for x in g.members if x.param == consumer + ".weight")
    keep = _keep_masks(a, {gid: keep_units})[(member.param, member.dim)]
    ids = torch.randint(5, 128, (6, 16), generator=torch.Generator().manual_seed(1))
    xs = []
    h = m.get_submodule(consumer).register_forward_pre_hook(lambda mod, args: xs.append(args[0]))
    stats = calibrate_whole(m, [{"input_ids": ids}], StatsRequest(
        {consumer: {Stat.INPUT_GRAM, Stat.INPUT_SUM}}), progress=False)
    h.remove()
    X = xs[0].reshape(-1, xs[0].shape[-1]).double()
    return m, a, g, member, keep, keep_units, stats, X


def _out(layer, X, cols):
    W = layer.W.detach().double()
    b = layer.bias()
    y = X[:, cols] @ W[:, cols].T
    return y + (b.detach().double() if b is not None else 0)


@pytest.mark.parametrize("family,gid,consumer", CASES)
def test_liar_beats_plain_deletion_and_is_identity_when_nothing_is_pruned(family, gid, consumer):
    m, a, g, member, keep, _, stats, X = _setup(family, gid, consumer)
    layer = ConsumerLayer(m, consumer, member.param, member.dim)
    dense = _out(layer, X, slice(None))
    W0 = layer.W.detach().clone()
    get_reconstructor("liar").fold(layer, torch.ones_like(keep), stats, 0.01)
    assert torch.equal(layer.W, W0)  # nothing pruned: identity
    deleted = _out(layer, X, keep)
    err_del = (deleted - dense).pow(2).sum()
    for name in ("flap_bias", "liar"):
        mm = copy.deepcopy(m)
        lay = ConsumerLayer(mm, consumer, member.param, member.dim)
        get_reconstructor(name).fold(lay, keep, stats, 1e-6)
        err = (_out(lay, X, keep) - dense).pow(2).sum()
        assert err < err_del, (name, float(err), float(err_del))
    mm = copy.deepcopy(m)
    lay = ConsumerLayer(mm, consumer, member.param, member.dim)
    get_reconstructor("flap_bias").fold(lay, keep, stats, 0.0)
    err_flap = (_out(lay, X, keep) - dense).pow(2).sum()
    get_reconstructor("liar").fold(layer, keep, stats, 1e-6)
    assert (_out(layer, X, keep) - dense).pow(2).sum() <= err_flap * (1 + 1e-6)


def test_flap_bias_is_liar_with_q_zero():
    m, a, g, member, keep, _, stats, X = _setup(*CASES[1])
    st = stats[CASES[1][2]]
    # with the kept block damped to infinity LIAR's Q vanishes and p becomes the mean of x_P
    Q, p = liar_coefficients(st.gram.double(), st.input_sum.double(), st.count, keep, alpha=1e12)
    assert Q.abs().max() < 1e-6
    assert torch.allclose(p, (st.input_sum.double() / st.count)[~keep], atol=1e-6)


def test_goa_refit_never_worse_than_its_starting_point():
    m, a, g, member, keep, _, stats, X = _setup(*CASES[1])
    layer = ConsumerLayer(m, CASES[1][2], member.param, member.dim)
    dense = _out(layer, X, slice(None))
    get_reconstructor("liar").fold(layer, keep, stats, 0.01)
    err_liar = (_out(layer, X, keep) - dense).pow(2).sum()
    # refit the kept columns against the dense outputs (what GOA step 2 does after removal)
    acc = RefitAccumulator()
    acc.add(X[:, keep], dense)
    W_kept = layer.W.detach()[:, keep].clone()
    small = torch.nn.Linear(W_kept.shape[1], W_kept.shape[0]).double()
    acc.solve_into(ConsumerLayer(torch.nn.ModuleDict({"l": small}), "l", "l.weight", 1), 1e-8)
    err_refit = (X[:, keep] @ small.weight.detach().T + small.bias.detach() - dense).pow(2).sum()
    assert err_refit <= err_liar * (1 + 1e-9)


def test_added_biases_save_and_reload(tmp_path, ids):
    m, a, g, member, keep, keep_units, stats, X = _setup(*CASES[1])
    layer = ConsumerLayer(m, CASES[1][2], member.param, member.dim)
    assert layer.bias() is None
    get_reconstructor("liar").fold(layer, keep, stats, 0.01)
    prune(m, {CASES[1][1]: keep_units}, a)
    assert m.model.layers[0].mlp.down_proj.bias is not None
    out = save_pruned(m, tmp_path / "liar")
    back = load_pruned(out)
    assert back.model.layers[0].mlp.down_proj.bias is not None
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, m(input_ids=ids).logits)


def test_goa_refit_ridge_pulls_towards_the_current_weights():
    # with a huge ridge the refit must stay at its starting point, not collapse to zero
    small = torch.nn.Linear(6, 3).double()
    W0 = small.weight.detach().clone()
    acc = RefitAccumulator()
    x = torch.randn(50, 6, dtype=torch.float64)
    acc.add(x, torch.randn(50, 3, dtype=torch.float64))
    acc.solve_into(ConsumerLayer(torch.nn.ModuleDict({"l": small}), "l", "l.weight", 1), 1e9)
    assert torch.allclose(small.weight.detach(), W0, atol=1e-5)
