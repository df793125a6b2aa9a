"""Fail early, save always (issue 14, item 8): widths the stock config cannot express are saved in a
form that loads (the stock config kept valid + recorded per-layer structure, explicit head_dim)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fxprune.analysis.analyser import analyse
from fxprune.checkpoint import load_pruned, save_pruned
from fxprune.models.tiny import tiny_model
from fxprune.surgery import prune


def logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


@pytest.mark.parametrize("cfg,kind,keep,heads_after", [
    # a LLaMA with 32 q heads in 4 KV groups, hidden 2048, pruned to 6 q heads per group (24 heads):
    # transformers refuses "hidden size (2048) is not a multiple of the number of attention heads (24)"
    (dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=64), "attn_q_per_kv", 6, 24),
    # SmolLM2's attention (9 heads of 64, hidden 576) as MHA, pruned to 7 heads
    (dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=9, head_dim=64), "attn_heads", 7, 7),
], ids=["24-of-32-heads-hidden-2048", "7-of-9-heads-hidden-576"])
def test_widths_the_stock_config_refuses_are_saved_and_load(tmp_path, cfg, kind, keep, heads_after):
    torch.manual_seed(0)
    m = tiny_model("llama", num_hidden_layers=1, intermediate_size=64, **cfg)
    a = analyse(m)
    plan = {g.id: list(range(keep)) for g in a.prunable() if g.kind == kind}
    assert plan
    r = prune(m, plan, a)
    assert not r.stock_config  # the stock config cannot say it ...
    assert m.config.num_attention_heads == cfg["num_attention_heads"]  # ... and was left valid
    ids = torch.randint(0, 128, (1, 10))
    want = logits(m, ids)
    out = save_pruned(m, tmp_path / "p")  # ... so saving works
    saved = json.loads((out / "config.json").read_text())
    assert saved["head_dim"] == 64 and "fxprune_structure" in saved
    q = saved["fxprune_structure"]["params"]["model.layers.0.self_attn.q_proj.weight"]
    assert q == [heads_after * 64, cfg["hidden_size"]]
    assert torch.equal(logits(load_pruned(out), ids), want)
    stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert torch.allclose(logits(stock, ids), want, atol=1e-5)


def test_valid_uniform_widths_still_use_the_stock_config(tmp_path):
    m = tiny_model("llama", hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    a = analyse(m)
    plan = {g.id: [0, 1] for g in a.prunable() if g.kind == "attn_q_per_kv"}  # 4 heads: 64 % 4 == 0
    assert prune(m, plan, a).stock_config and m.config.num_attention_heads == 4
