"""An op with no rule blocks exactly the group it touches, and the report names it."""
import copy

import torch
from torch import nn

from fxprune.analysis.analyser import analyse
from fxprune.surgery import apply_mask, prune


@torch.library.custom_op("fxprune_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).clone()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class TwoFFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.a_up, self.a_down = nn.Linear(16, 24), nn.Linear(24, 16)
        self.b_up, self.b_down = nn.Linear(16, 20), nn.Linear(20, 16)
        self.head = nn.Linear(16, 50)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        h = h + self.a_down(torch.relu(self.a_up(h)))
        h = h + self.b_down(mystery(torch.relu(self.b_up(h))))  # channel order scrambled
        return self.head(h)


def test_custom_op_blocks_only_its_group():
    m = TwoFFN().eval()
    ids = torch.randint(0, 50, (1, 5))
    a = analyse(m, supported_kinds={"ffn_channels"})
    by_param = {(m_.param, m_.dim): g for g in a.groups for m_ in g.members}
    ok, bad = by_param[("a_up.weight", 0)], by_param[("b_up.weight", 0)]
    assert ok.prunable and ok.kind == "ffn_channels" and ok.units == 24
    assert not bad.prunable
    assert any("fxprune_test.mystery" in b for b in bad.blocked_by)
    assert [o["op"] for o in a.blocking_ops] == ["fxprune_test.mystery.default"]
    plan = {ok.id: list(range(0, 24, 3))}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    prune(m, plan, a)
    assert m.a_up.out_features == 8 and m.a_down.in_features == 8
    with torch.no_grad():
        assert torch.allclose(m(ids), ref(ids), atol=1e-6)


class MaskedRows(nn.Module):
    """An FFN applied only to the rows a data-dependent mask picks (X-MOD's language adapters):
    the selected tensor has a size known only at run time."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.up, self.down = nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 50)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        pick = input_ids > 25
        rows = h[pick]
        h = h.index_put((pick,), rows + self.down(torch.relu(self.up(rows))))
        return self.head(h)


def test_data_dependent_row_counts_do_not_stop_the_analysis():
    torch.manual_seed(0)
    m = MaskedRows().eval()
    a = analyse(m)
    g = a.group("model")
    assert g.kind == "ffn_channels" and g.units == 24 and g.prunable
    ids = torch.tensor([[3, 30, 7, 41, 26, 2]])
    plan = {"model": list(range(0, 24, 2))}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    prune(m, plan, a)
    assert m.up.weight.shape == (12, 16)
    with torch.no_grad():
        assert torch.allclose(m(ids), ref(ids), atol=1e-6)


def test_needs_names_an_adapter_for_a_failing_dry_run_and_types_reasons():
    from types import SimpleNamespace

    from fxprune.analysis.groups import Group
    from fxprune.analysis.needs import names_module, needs, reason_type
    why = ("surgery dry run (meta device) fails when transformer.h loses a unit: RuntimeError at "
           "modeling_bloom.py:271: The expanded size of the tensor (3) must match")
    g = Group("transformer.h", "attn_heads", 4, 16, 10, (), not_offered=why)
    todo = needs(SimpleNamespace(groups=[g]))
    assert todo == [{"need": "adapter", "what": "an adapter (fxprune/models/, sync_module) for what "
                     "modeling_bloom.py:271 derives from the old width: the pruned model's forward fails "
                     "there (RuntimeError)", "where": ["transformer.h"], "groups": ["transformer.h"]}]
    assert reason_type(why) == "adapter" and names_module(why)
    assert reason_type("no rule for aten.im2col.default @ convbert.encoder.layer.0.attention.self") == "rule"
    assert reason_type("fixed: buffer model.layers.1.mlp.gate.e_score_correction_bias") == "fixed"
    assert reason_type("unaligned piece (aten.slice.Tensor @ gpt_neox.layers.0.attention)") == "rule-limit"
    assert not names_module("reduced by aten.mean.dim @ <root>")
