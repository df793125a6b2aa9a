"""Issue 13 levers: the output Fisher, loss-weighted OBS costs and the pooled allocation."""
import torch
import torch.nn.functional as F

from fxprune.models.tiny import tiny_model
from fxprune.passes.allocate_pooled import _lower_hull_slopes, pooled
from fxprune.passes.sensitivity import output_fisher


def test_output_fisher_is_the_squared_loss_gradient():
    m = tiny_model("llama")
    w = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj"
    got = output_fisher(m, w, [name], batch_size=2)
    ref = torch.zeros(64, dtype=torch.float64)
    for row in w:  # one window at a time, by hand
        store = {}

        def keep(mod, a, out):
            out.retain_grad()
            store["y"] = out
        h = m.get_submodule(name).register_forward_hook(keep)
        logits = m(input_ids=row[None]).logits[0, :-1]
        F.cross_entropy(logits, row[1:], reduction="sum").backward()
        h.remove()
        ref += store["y"].grad.double().pow(2).reshape(-1, 64).sum(0)
        m.zero_grad()
    torch.testing.assert_close(got[name], ref, rtol=1e-4, atol=1e-10)
    assert float(got["__tokens__"]) == 3 * 11
    assert all(p.requires_grad for p in m.parameters())  # restored after the pass


def test_lower_hull_slopes_are_nondecreasing_and_exact_on_convex_curves():
    assert _lower_hull_slopes([1.0, 3.0, 6.0]) == [1.0, 2.0, 3.0]
    s = _lower_hull_slopes([5.0, 5.5, 6.0, 20.0])  # a costly first unit, then cheap ones
    assert all(a <= b + 1e-12 for a, b in zip(s, s[1:])) and abs(sum(s) - 20.0) < 1e-9


class _G:
    def __init__(self, gid, units, kind):
        self.id, self.units, self.kind = gid, units, kind


def test_pooled_removes_by_cost_per_parameter_across_kinds():
    attn, ffn = _G("a", 3, "attn"), _G("f", 16, "ffn")
    ppu = {"a": 100, "f": 10}

    def removed(kept):
        return sum(ppu[g] * (u - kept.get(g, u)) for g, u in (("a", 3), ("f", 16)))
    # a head costs 5 for 100 parameters (0.05/param); FFN channels cost 0.1 each (0.01/param) up to 8,
    # then 10 each (1/param): the pool takes 8 channels, then the head, before any expensive channel
    f_costs = torch.cumsum(torch.tensor([0.1] * 8 + [10.0] * 8, dtype=torch.float64), 0)
    scores = {"a": torch.tensor([5.0, 50.0, 500.0], dtype=torch.float64), "f": f_costs[torch.randperm(16)]}
    kept = pooled([attn, ffn], scores, removed, 180, ("attn",), 1)
    assert kept == {"a": 2, "f": 8}
