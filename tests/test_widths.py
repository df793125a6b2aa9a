"""Generic surgery: module attributes that carry widths are found by tracing, not by family code."""
import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from fxprune.analysis.analyser import analyse
from fxprune.kinds import DEPTH2_KINDS, Kind
from fxprune.models.tiny import tiny_model
from fxprune.surgery import apply_mask, prune


class Attn(nn.Module):
    """A hand-written MHA: the head count is an attribute (``n_heads``), or a literal (``fixed``)."""

    def __init__(self, d=32, heads=4, fixed=False):
        super().__init__()
        self.n_heads, self.head_dim, self.fixed = heads, d // heads, fixed
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 48), nn.Linear(48, d)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = 4 if self.fixed else self.n_heads
        q, k, v = (t.view(b, s, heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(o.transpose(1, 2).reshape(b, s, heads * self.head_dim))
        return x + self.down(torch.relu(self.up(x)))


class Toy(nn.Module):
    def __init__(self, fixed=False):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.blocks = nn.ModuleList([Attn(fixed=fixed) for _ in range(2)])
        self.head = nn.Linear(32, 50)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def test_attribute_head_count_is_found_and_resized():
    torch.manual_seed(0)
    m = Toy().eval()
    ids = torch.randint(0, 50, (2, 7))
    a = analyse(m)
    heads = a.group("blocks.0")
    assert heads.kind == Kind.ATTN_HEADS and heads.units == 4 and heads.prunable
    used = {str(x) for x in a.widths.used()}
    assert {"blocks.0.n_heads", "blocks.0.head_dim"} <= used
    plan = {"blocks.0": [0, 3], "blocks.1": [2]}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    prune(m, plan, a)
    assert (m.blocks[0].n_heads, m.blocks[1].n_heads) == (2, 1)  # set by surgery, no adapter
    assert m.blocks[0].head_dim == 8
    with torch.no_grad():
        assert torch.allclose(m(ids), ref(ids), atol=1e-6)


def test_constant_head_count_is_not_offered_with_its_reason():
    m = Toy(fixed=True).eval()
    a = analyse(m)
    g = a.group("blocks.0")
    assert g.kind == Kind.ATTN_HEADS and not g.prunable
    assert "is a constant" in g.not_offered and "blocks.0" in g.not_offered and "test_widths.py" in g.not_offered
    ffn = [f for f in a.groups if f.kind == Kind.FFN and f.module == "blocks.0"]
    assert len(ffn) == 1 and ffn[0].prunable and ffn[0].units == 48  # the FFN beside it is unaffected


def test_gemma3_like_mqa_with_qk_norms_is_fully_prunable(ids):
    """The report that opened issue 12: q/k norms + multi-query attention (one KV head)."""
    from fxprune.models.zoo import tiny_zoo_model
    m = tiny_zoo_model("gemma3_text", num_key_value_heads=1, num_attention_heads=4)
    a = analyse(m)
    attn = [g for g in a.groups if g.kind in (Kind.ATTN_Q_PER_KV, Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS,
                                               Kind.V_CHANNELS)]
    assert {g.kind for g in attn} == {Kind.ATTN_Q_PER_KV, Kind.V_CHANNELS}
    assert all(g.prunable for g in attn), [(g.id, g.not_offered) for g in attn]
    plan = {"model.layers.0.self_attn:q_per_kv": [1, 3], "model.layers.1.self_attn:q_per_kv": [2],
            "model.layers.0.self_attn:v_channels": list(range(10))}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    prune(m, plan, a)
    assert [l.self_attn.num_key_value_groups for l in m.model.layers] == [2, 1]
    with torch.no_grad():
        y, r = m(input_ids=ids).logits, ref(input_ids=ids).logits
    assert torch.allclose(y, r, atol=1e-5, rtol=1e-5)
    p = ids[:1, :4]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(m.generate(p, use_cache=True, **kw), m.generate(p, use_cache=False, **kw))


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba"])
def test_every_group_not_prunable_says_why(family):
    a = analyse(tiny_model(family))
    for g in a.groups:
        assert g.prunable or g.not_offered or g.blocked_by, g.id
        assert all(r.strip() for r in g.blocked_by)
        if g.kind in DEPTH2_KINDS and not g.prunable:
            assert " @ " in (g.not_offered + " ".join(g.blocked_by)) or "." in g.not_offered


def test_stock_config_learns_head_dim_after_heads_are_removed(ids, tmp_path):
    """qwen2 tiny: 6 heads of 10 in hidden 64 (head_dim derived as 64 // 6). With 4 heads left the
    derived value would be 16: the generic config patch adds ``head_dim`` (read by the constructor
    with ``getattr(config, "head_dim", None)``) and the stock loader reproduces the model."""
    from transformers import AutoModelForCausalLM

    from fxprune.checkpoint import is_fxprune_checkpoint, save_pruned
    m = tiny_model("qwen2")
    a = analyse(m)
    plan = {f"model.layers.{i}.self_attn:q_per_kv": [0, 2] for i in range(2)}
    r = prune(m, plan, a)
    assert r.stock_config and m.config.num_attention_heads == 4 and m.config.head_dim == 10
    out = save_pruned(m, tmp_path / "q")
    assert not is_fxprune_checkpoint(out)
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(stock(input_ids=ids).logits, m(input_ids=ids).logits)


def test_stale_attribute_is_rederived_from_the_construction():
    """``LlamaMLP.intermediate_size`` is never read by the forward: surgery derives it from the
    constructor's expression (the same config field as gate_proj's rows), per layer."""
    m = tiny_model("llama")
    a = analyse(m)
    prune(m, {"model.layers.0.mlp": list(range(40)), "model.layers.1.mlp": list(range(7))}, a)
    assert [l.mlp.intermediate_size for l in m.model.layers] == [40, 7]


def test_analysis_does_not_import_models():
    """Issue 11 item 5: no import cycle between fxprune/analysis and fxprune/models."""
    root = Path(__file__).resolve().parents[1] / "fxprune" / "analysis"
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "models" not in mod.split("."), f"{f.name} imports {mod}"


class OddFFN(nn.Module):
    """The FFN activation goes through an op fxprune has no rule for (``logcumsumexp`` over channels)."""

    def __init__(self, d=32):
        super().__init__()
        self.emb, self.up, self.down, self.head = nn.Embedding(50, d), nn.Linear(d, 48), nn.Linear(48, d), nn.Linear(d, 50)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        h = h + self.down(torch.logcumsumexp(self.up(h), dim=-1))
        return self.head(h)


def test_needs_names_the_missing_rule_and_the_missing_adapter():
    """Issue 12 item 5: what a contributor would add (a rule for op X, an adapter for attribute Y),
    with the module it is needed at and the groups it would free."""
    from fxprune.analysis.needs import needs
    rule = needs(analyse(OddFFN().eval()))
    assert [(n["need"], n["groups"]) for n in rule] == [("rule", ["down:other", "up:other"])]
    assert "aten.logcumsumexp" in rule[0]["what"] and rule[0]["where"] == ["<root>"]
    adapter = needs(analyse(Toy(fixed=True).eval()))
    assert [n["need"] for n in adapter] == ["adapter"] and adapter[0]["groups"] == ["blocks.0", "blocks.1"]
    assert "width 4 hard-coded at view (test_widths.py:30)" in adapter[0]["what"]
    assert adapter[0]["where"] == ["blocks.0", "blocks.1"]
