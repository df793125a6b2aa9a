"""Issue 13: the structured method on a Gemma-3-like decoder (multi-query attention, q/k norms, a
norm after the attention and FFN outputs, GELU, a vocabulary much larger than the width).

Mechanism tests with tiny random weights (random models barely react to pruning: these check
invariances and the direction of an error, never quality)."""
import pytest
import torch

from fxprune.pipeline import prune_model
from fxprune.recipe import load_recipe


def Recipe(**fields):
    """A one-step structured recipe from flat fields (the older recipe format)."""
    return load_recipe({**fields, "kinds": list(fields.get("kinds", ("attention", "ffn", "ssm")))})


def tiny_gemma(seed=0, layers=2):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    cfg = Gemma3TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                           max_position_embeddings=256, sliding_window=32, query_pre_attn_scalar=16, initializer_range=0.2,
                           layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"])
    torch.manual_seed(seed)
    m = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # spread the norms' gains as trained models have them
        for n, p in m.named_parameters():
            if n.endswith("layernorm.weight"):
                p.copy_(torch.randn_like(p) * 0.5)
    return m


def _windows(n=16, L=32, seed=1, bos=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(3, 1024, (n, L), generator=g)
    w[:, 0] = bos
    return w


def _rescale_down(model, factors):
    """Multiply each layer's down_proj by a constant: a post-FFN norm undoes it (same function)."""
    with torch.no_grad():
        for layer, c in zip(model.model.layers, factors):
            layer.mlp.down_proj.weight.mul_(c)


def test_post_ffn_norm_makes_down_proj_scale_free():
    w = _windows(4)
    a, b = tiny_gemma(), tiny_gemma()
    _rescale_down(b, [0.25, 8.0])
    torch.testing.assert_close(a(input_ids=w).logits, b(input_ids=w).logits, rtol=1e-4, atol=1e-4)


def _plan(model, criterion, allocation, w):
    r = Recipe(criterion=criterion, reconstruction="liar", allocation=allocation, target=0.3, kinds=("ffn",),
               channel_multiple=4, calib_samples=w.shape[0], calib_seq_len=w.shape[1])
    res = prune_model(model, r, w)
    return {g: len(k) for g, k in res.plan.items()}


def test_loss_weighted_costs_pool_across_renormalised_layers():
    """fisher_obs + pooled: the allocation does not move when a post-norm'd layer is rescaled (its
    costs are in calibration-loss units); raw output energy (goa) pooled the same way moves."""
    w = _windows()
    base = _plan(tiny_gemma(), "fisher_obs", "pooled", w)
    m = tiny_gemma()
    _rescale_down(m, [0.25, 8.0])
    assert _plan(m, "fisher_obs", "pooled", w) == base
    g0 = _plan(tiny_gemma(), "goa", "pooled", w)
    m = tiny_gemma()
    _rescale_down(m, [0.25, 8.0])
    g1 = _plan(m, "goa", "pooled", w)
    assert g1 != g0  # energy is not a currency across layers whose outputs are renormalised
    assert g1["model.layers.0.mlp"] < g0["model.layers.0.mlp"]  # the shrunk layer looks cheap


def _layer_outputs(model, w):
    outs = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=w)
    for h in hooks:
        h.remove()
    return outs


def test_liar_lowers_the_error_after_the_post_norms_attention_and_ffn():
    """LIAR fits the consumer's pre-norm output; the error that reaches the residual stream, after the
    post-attention and post-FFN norms, must fall too (attention: q heads of the single KV group)."""
    w = _windows()
    dense = _layer_outputs(tiny_gemma(), w)
    err = {}
    for rec in ("none", "liar"):
        m = tiny_gemma()
        r = Recipe(criterion="goa", reconstruction=rec, allocation="uniform", target=0.3,
                   kinds=("attention", "ffn"), channel_multiple=4, calib_samples=w.shape[0], calib_seq_len=w.shape[1])
        res = prune_model(m, r, w)
        assert any("q_per_kv" in g for g in res.plan)  # MQA heads pruned, q/k norms kept whole
        err[rec] = sum(float((a - b).pow(2).sum() / b.pow(2).sum()) for a, b in zip(_layer_outputs(m, w), dense))
    assert err["liar"] < err["none"]
