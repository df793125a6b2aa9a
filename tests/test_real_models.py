"""A few checks on the real pretrained models shipped by PyPI packages (SmolLM2-135M, MiniLM-L6)."""
import copy

import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.loading import load_model
from fxprune.surgery import apply_mask, prune

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2():
    try:
        loaded = load_model("smollm2")
    except Exception as e:  # pragma: no cover - the package is installed by scripts/setup.sh
        pytest.skip(f"SmolLM2 not available: {e}")
    return loaded, analyse(loaded.model)


def test_smollm2_groups(smollm2):
    _, a = smollm2
    kinds = [g.kind for g in a.prunable()]
    assert kinds.count("ffn_channels") == 30 and kinds.count("attn_kv_groups") == 30
    assert kinds.count("attn_q_per_kv") == 30 and kinds.count("attn_v_channels") == 30 and len(kinds) == 120
    assert a.group("model.layers.7.self_attn:v_channels").units == 64
    g = a.group("model.layers.7.self_attn")
    assert (g.units, g.unit_size) == (3, 192)  # 3 KV heads, each with 3 q heads of 64 channels
    assert a.group("model.layers.7.self_attn:q_per_kv").units == 3
    assert a.group("model.layers.29.mlp").units == 1536
    assert a.capture_seconds + a.analysis_seconds < 120


def test_smollm2_pruned_equals_masked_and_generates(smollm2):
    loaded, a = smollm2
    model = copy.deepcopy(loaded.model)
    plan = {"model.layers.0.mlp": list(range(0, 1536, 2)),
            "model.layers.3.self_attn:q_per_kv": [0, 2],
            "model.layers.5.self_attn": [0, 1]}
    ref = apply_mask(copy.deepcopy(loaded.model), a, plan)
    tok = loaded.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    r = prune(model, plan, a, verify=True)
    assert r.params_before - r.params_after == 768 * 3 * 576 + _attn_removed()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


def _attn_removed():
    # layer 3: one q head per KV group (3 heads x 64 rows of q, 3 x 64 cols of o), hidden 576
    q_per_kv = 2 * 3 * 64 * 576
    # layer 5: one KV group (3 q heads + 1 k + 1 v head of 64, and 3 x 64 columns of o)
    kv = (3 * 64 + 64 + 64) * 576 + 3 * 64 * 576
    return q_per_kv + kv


def test_minilm_encoder_heads_and_ffn():
    try:
        loaded = load_model("minilm")
    except Exception as e:  # pragma: no cover
        pytest.skip(f"MiniLM not available: {e}")
    m = loaded.model
    a = analyse(m)
    heads = a.prunable("attn_heads")
    assert len(heads) == 6 and all(g.units == 12 and g.unit_size == 32 for g in heads)
    assert len(a.prunable("ffn_channels")) == 6
    plan = {"encoder.layer.2.attention": list(range(0, 12, 2)), "encoder.layer.4": list(range(700))}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    ids = loaded.tokenizer("pruning without retraining", return_tensors="pt").input_ids
    prune(m, plan, a)
    with torch.no_grad():
        assert torch.allclose(m(ids).last_hidden_state, ref(ids).last_hidden_state, atol=1e-4)


def test_smollm2_saves_and_reloads_with_stock_transformers(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    from fxprune.checkpoint import save_pruned
    loaded, _ = smollm2
    out = save_pruned(loaded.model, tmp_path / "dense", tokenizer=loaded.tokenizer)
    back = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, loaded.model(ids).logits)
