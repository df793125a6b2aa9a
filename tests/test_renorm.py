"""Whole-width norms (``analysis/renorm.py``): channels a norm takes its statistic over are prunable,
the statistic is then over the kept channels, and masking computes exactly what slicing computes."""
import copy

import pytest
import torch
from torch import nn

from fxprune.analysis.analyser import analyse
from fxprune.analysis.needs import names_module, reason_type
from fxprune.kinds import Kind
from fxprune.models.zoo import tiny_zoo_model
from fxprune.surgery import apply_mask, prune


def out(m, ids):
    with torch.no_grad():
        o = m(input_ids=ids) if not isinstance(m, Toy) else m(ids)
    return o if isinstance(o, torch.Tensor) else o.logits


def close(a, b, rel=1e-5):
    return float((a - b).abs().max()) <= rel * float(b.abs().max()) + 1e-7


class WholeNorm(nn.Module):
    """An RMS norm over the whole last dim (a q_norm over every head of a projection)."""

    def __init__(self, d, weight=True):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.5 * torch.randn(d)) if weight else None

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y * self.weight if self.weight is not None else y


class Block(nn.Module):
    """MHA whose q and k are normalised over all heads at once, an FFN with a weightless sub-norm
    before its down projection, weights read through ``.mT`` and ``.T``."""

    def __init__(self, d=32, heads=4, ffn=40):
        super().__init__()
        self.n_heads, self.head_dim = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.q_norm, self.k_norm = WholeNorm(d), WholeNorm(d)
        self.up = nn.Parameter(torch.randn(ffn, d) / d ** 0.5)
        self.down = nn.Parameter(torch.randn(d, ffn) / ffn ** 0.5)
        self.sub_norm = WholeNorm(ffn, weight=False)

    def forward(self, x):
        b, s, _ = x.shape
        q, k = self.q_norm(self.q(x)), self.k_norm(self.k(x))
        q, k, v = (t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, self.v(x)))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))
        h = self.sub_norm(torch.relu(x @ self.up.mT))
        return x + h @ self.down.T


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.head = nn.Linear(32, 50)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    m = Toy().eval()
    return m, analyse(m)


def test_whole_width_norms_lift_and_name_their_modules(toy):
    _, a = toy
    heads, ffn = a.group("blocks.0#1"), a.group("blocks.0")
    assert (heads.kind, heads.units, heads.prunable) == (Kind.ATTN_HEADS, 4, True)
    assert sorted(heads.detail["renorm"]) == ["blocks.0.k_norm", "blocks.0.q_norm"]
    assert {"blocks.0.q_norm.weight", "blocks.0.k_norm.weight"} <= {m.param for m in heads.members}
    assert (ffn.kind, ffn.units, ffn.prunable) == (Kind.FFN, 40, True)  # read through .mT and .T
    assert list(ffn.detail["renorm"]) == ["blocks.0.sub_norm"]
    assert not a.blocking_ops


def test_slicing_equals_masking_through_whole_width_norms(toy, monkeypatch):
    m0, a = toy
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    plan = {"blocks.0#1": [0, 3], "blocks.1#1": [2], "blocks.0": list(range(0, 40, 3)), "blocks.1": [1, 5, 7]}
    ref = apply_mask(copy.deepcopy(m0), a, plan)
    m = copy.deepcopy(m0)
    prune(m, plan, a)
    assert m.blocks[0].q_norm.weight.shape == (16,) and m.blocks[1].k_norm.weight.shape == (8,)
    assert m.blocks[0].up.shape == (14, 32)
    assert close(out(m, ids), out(ref, ids))
    assert not close(out(m0, ids), out(ref, ids), 1e-3)  # the plan changed the model
    # the statistic really is over the kept channels: masking without the norm hooks differs
    monkeypatch.setattr("fxprune.surgery.mask_renorms", lambda *a, **k: [])
    plain = apply_mask(copy.deepcopy(m0), a, plan)
    assert not close(out(plain, ids), out(ref, ids), 1e-3)


def test_pruning_nothing_through_a_norm_is_the_dense_model(toy):
    m0, a = toy
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    plan = {"blocks.0#1": list(range(4)), "blocks.0": list(range(40))}
    ref = apply_mask(copy.deepcopy(m0), a, plan)
    m = copy.deepcopy(m0)
    prune(m, plan, a)
    dense = out(m0, ids)
    assert torch.equal(out(ref, ids), dense) and close(out(m, ids), dense, 1e-6)


@pytest.mark.parametrize("family,kinds", [("olmo2", (Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV)),
                                          ("bitnet", (Kind.ATTN_KV_GROUPS, Kind.FFN)),
                                          ("dory", (Kind.FFN,))])
def test_transformers_norm_families(family, kinds, ids):
    m0 = tiny_zoo_model(family)
    a = analyse(m0)
    plan = {}
    for g in a.groups:
        if g.kind in kinds:
            assert g.prunable and g.detail.get("renorm"), (g.id, g.blocked_by, g.not_offered)
            plan[g.id] = list(range(0, g.units, 2))
    ref = apply_mask(copy.deepcopy(m0), a, plan)
    m = copy.deepcopy(m0)
    prune(m, plan, a)
    assert close(out(m, ids), out(ref, ids))
    assert not close(out(m0, ids), out(ref, ids), 1e-4)


def test_grouped_norm_stays_blocked_with_a_typed_reason():
    """Mamba-2's gated norm normalises groups of channels: renormalising over kept channels would
    change its group size, so the channels inside heads keep the block (and say where)."""
    a = analyse(tiny_zoo_model("mamba2"))
    ch = [g for g in a.groups if g.kind == Kind.SSM]
    assert ch and not any(g.prunable for g in ch)
    for g in ch:
        why = (g.blocked_by or (g.not_offered,))[0]
        assert why.startswith("reduced by") and "mixer.norm" in why
        assert reason_type(why) == "rule-limit" and names_module(why)


def test_layer_norm_module_inside_a_group(ids):
    """RemBERT's LM head: dense -> act -> nn.LayerNorm -> decoder. The LayerNorm's channels are the
    group's; after pruning it normalises the kept channels (its normalized_shape follows)."""
    m0 = tiny_zoo_model("rembert", "masked")
    a = analyse(m0)
    g = a.group("cls.predictions")
    assert (g.kind, g.prunable, list(g.detail["renorm"])) == (Kind.FFN, True, ["cls.predictions.LayerNorm"])
    plan = {g.id: list(range(0, g.units, 3))}
    ref = apply_mask(copy.deepcopy(m0), a, plan)
    m = copy.deepcopy(m0)
    prune(m, plan, a)
    assert m.cls.predictions.LayerNorm.normalized_shape == (len(plan[g.id]),)
    assert close(out(m, ids), out(ref, ids)) and not close(out(m0, ids), out(ref, ids), 1e-4)
