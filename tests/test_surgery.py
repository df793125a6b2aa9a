"""Physical pruning: 0% is the identity, slicing equals masking, generate/save/reload keep working."""
import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from conftest import half_plan
from fxprune.analysis.analyser import analyse
from fxprune.checkpoint import is_fxprune_checkpoint, load_pruned, save_pruned
from fxprune.models.tiny import TINY_FAMILIES, tiny_model
from fxprune.surgery import apply_mask, count_params, prune

FAMILIES = sorted(TINY_FAMILIES)


def logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_pruning_is_identity(family, ids):
    m = tiny_model(family)
    dense = logits(m, ids)
    a = analyse(m)
    plan = {g.id: list(range(g.units)) for g in a.prunable()}
    r = prune(m, plan, a)
    assert r.params_after == r.params_before
    assert torch.equal(logits(m, ids), dense)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_group_at_once_equals_masking(family, ids):
    m = tiny_model(family)
    a = analyse(m)
    plan = half_plan(a, seed=1)
    assert {a.group(g).kind for g in plan} >= ({"ssm_channels"} if family == "mamba" else {"ffn_channels"})
    ref = apply_mask(copy.deepcopy(m), a, plan)
    r = prune(m, plan, a, verify=True)
    assert r.params_after < r.params_before
    assert torch.allclose(logits(m, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)
    # masking really changed the function (the test could fail)
    assert not torch.allclose(logits(tiny_model(family), ids), logits(ref, ids), atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2", "opt"])
def test_generate_with_cache_after_pruning(family):
    m = tiny_model(family)
    a = analyse(m)
    prune(m, half_plan(a, seed=2, vary=True), a)
    ids = torch.tensor([[5, 6, 7, 8]])
    out_cache = m.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    out_nocache = m.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert out_cache.shape == (1, 10)
    assert torch.equal(out_cache, out_nocache)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("vary", [False, True], ids=["uniform", "per_layer"])
def test_save_reload_reproduces_outputs(family, vary, ids, tmp_path):
    m = tiny_model(family)
    a = analyse(m)
    prune(m, half_plan(a, seed=3, vary=vary), a, verify=False)
    out = save_pruned(m, tmp_path / "pruned")
    y = logits(m, ids)
    assert torch.allclose(logits(load_pruned(out), ids), y, atol=1e-5)  # attention kernel may differ
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    if is_fxprune_checkpoint(out):
        stock = auto.from_pretrained(out, trust_remote_code=True)
    else:
        stock = auto.from_pretrained(out)
    assert torch.allclose(logits(stock.eval(), ids), y, atol=1e-5)


def test_uniform_llama_plan_loads_with_stock_config(ids, tmp_path):
    m = tiny_model("llama")
    a = analyse(m)
    plan = {"model.layers.0.self_attn:q_per_kv": [1], "model.layers.1.self_attn:q_per_kv": [0],
            "model.layers.0.mlp": list(range(0, 96, 2)), "model.layers.1.mlp": list(range(1, 96, 2))}
    r = prune(m, plan, a)
    assert r.stock_config and m.config.num_attention_heads == 2 and m.config.intermediate_size == 48
    out = save_pruned(m, tmp_path / "p")
    assert not is_fxprune_checkpoint(out)
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(logits(stock, ids), logits(m, ids))


def test_failed_save_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    m = tiny_model("llama")
    out = save_pruned(m, tmp_path / "ckpt")
    before = sorted(p.name for p in out.iterdir())
    weights = (out / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(type(m), "save_pretrained", boom)
    from fxprune.errors import CheckpointError
    with pytest.raises(CheckpointError, match="ckpt"):
        save_pruned(m, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "model.safetensors").read_bytes() == weights
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind


_CONFIGS = {
    "llama": lambda d: dict(num_attention_heads=d.draw(st.sampled_from([2, 4, 6])),
                            num_key_value_heads=None, head_dim=d.draw(st.sampled_from([4, 8])),
                            intermediate_size=d.draw(st.integers(8, 40)), num_hidden_layers=d.draw(st.integers(1, 3))),
    "gpt2": lambda d: dict(n_head=d.draw(st.sampled_from([2, 4])), n_inner=d.draw(st.integers(8, 40)),
                           n_layer=d.draw(st.integers(1, 2))),
    "opt": lambda d: dict(num_attention_heads=d.draw(st.sampled_from([2, 4])), ffn_dim=d.draw(st.integers(8, 40)),
                          num_hidden_layers=d.draw(st.integers(1, 2))),
    "bert": lambda d: dict(num_attention_heads=d.draw(st.sampled_from([2, 4])),
                           intermediate_size=d.draw(st.integers(8, 40)), num_hidden_layers=d.draw(st.integers(1, 2))),
    "mamba": lambda d: dict(hidden_size=d.draw(st.sampled_from([8, 16])), expand=d.draw(st.sampled_from([1, 2])),
                            num_hidden_layers=d.draw(st.integers(1, 2))),
}


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_configs_keep_properties(data):
    family = data.draw(st.sampled_from(sorted(_CONFIGS)))
    over = _CONFIGS[family](data)
    if family == "llama":
        over["num_key_value_heads"] = data.draw(st.sampled_from(
            [k for k in (1, 2, 3, 6) if over["num_attention_heads"] % k == 0]))
        over["hidden_size"] = 48  # divisible by every head count drawn
    m = tiny_model(family, seed=data.draw(st.integers(0, 5)), **over)
    ids = torch.randint(5, 128, (1, 6))
    a = analyse(m)
    assert a.prunable(), family
    plan = half_plan(a, seed=data.draw(st.integers(0, 100)), vary=True)
    ref = apply_mask(copy.deepcopy(m), a, plan)
    n0 = count_params(m)
    prune(m, plan, a)
    assert count_params(m) < n0
    assert torch.allclose(logits(m, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)
