"""Issue 13: attention pruned together with a globally allocated FFN (Olica's V/O rotation + low-rank
Q/K for attention, GOA/LIAR FFN channels whose widths follow pooled standardised scores)."""
import copy

import pytest
import torch

from fxprune.errors import RecipeError
from fxprune.models.tiny import tiny_model
from fxprune.pipeline import prune_model
from fxprune.recipe import load_recipe
from fxprune.report import find_pass
from fxprune.steps.structured import StructuredStep
from fxprune.surgery import count_params


def _ids(n=16, L=24, seed=1):
    return torch.randint(5, 128, (n, L), generator=torch.Generator().manual_seed(seed))


def _run(allocation, target=0.2, **kw):
    m = tiny_model("llama", num_hidden_layers=3)
    dense = copy.deepcopy(m)
    recipe = load_recipe({"calibration": {"samples": 16, "seq_len": 24, "batch_size": 8},
                          "steps": [{"structured": {"criterion": "goa", "reconstruction": "liar",
                                                    "allocation": allocation, "attention": "olica",
                                                    "target": target, "kinds": ["attention", "ffn"],
                                                    "channel_multiple": 4, **kw}}]})
    out = prune_model(m, recipe, _ids())
    return dense, m, out


def test_olica_global_meets_the_target_exactly_with_the_same_attention_share():
    dense_u, mu, out_u = _run("uniform")
    dense_g, mg, out_g = _run("global")
    su, sg = find_pass(out_u.report, "olica_split"), find_pass(out_g.report, "olica_split")
    # the counted removal is what surgery removed (LIAR adds a bias of 64 to every pruned down_proj),
    # and it is within a few channel steps of the target
    biases = sum(layer.mlp.down_proj.bias is not None for layer in mg.model.layers)
    assert biases >= 1
    assert count_params(dense_g) - count_params(mg) == sg["removed_params"] - 64 * biases
    assert abs(sg["removed_params"] - 0.2 * sg["in_scope_params"]) <= 3 * 4 * 64
    # the attention share is Olica's in both (same ranks, same kept value channels)
    assert (sg["s_qk"], sg["s_vo"], sg["v_kept"], sg["qk_ranks"]) == (su["s_qk"], su["s_vo"], su["v_kept"],
                                                                     su["qk_ranks"])
    assert len(su["ffn_kept"]) == 1 and sg["ffn_allocation"] == "global"
    assert find_pass(out_g.report, "score")["criterion"] == "goa"  # scored up front on the dense stream
    # the FFN removal is the same in total; global moves it between layers
    assert abs(sg["removed_params"] - su["removed_params"]) <= 3 * 4 * 64
    for m in (mu, mg):
        with torch.no_grad():
            assert torch.isfinite(m(input_ids=_ids(2, 10, seed=3)).logits).all()


def test_olica_global_at_zero_target_is_dense():
    dense, m, out = _run("global", target=0.0)
    ids = _ids(2, 10, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=ids).logits, dense(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert count_params(m) == count_params(dense)


def test_olica_still_refuses_pooled_allocation():
    with pytest.raises(RecipeError, match="allocation"):
        StructuredStep(attention="olica", allocation="pooled")
    StructuredStep(attention="olica", allocation="global")  # accepted now


def test_olica_global_on_the_gemma_like_testbed():
    """MQA (one KV head), q/k norms, post-attention/post-FFN norms, GELU: the attention is pruned too and
    the count is exact (random weights: no quality claim)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from test_quality_robust import _windows, tiny_gemma
    m = tiny_gemma(layers=3)
    dense = copy.deepcopy(m)
    recipe = load_recipe({"calibration": {"samples": 16, "seq_len": 32}, "steps": [{"structured": {
        "criterion": "goa", "reconstruction": "liar", "allocation": "global", "attention": "olica", "target": 0.2,
        "kinds": ["attention", "ffn"], "channel_multiple": 4}}]})
    out = prune_model(m, recipe, _windows())
    s = find_pass(out.report, "olica_split")
    assert s["v_kept"] == [14] and s["qk_ranks"]  # value channels and Q/K ranks cut in every layer
    assert abs(s["achieved"] - 0.2) < 0.01
    biases = sum(layer.mlp.down_proj.bias is not None for layer in m.model.layers)
    assert count_params(dense) - count_params(m) == s["removed_params"] - 64 * biases
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=_windows(2, seed=7)).logits).all()
