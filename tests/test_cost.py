"""The sympy cost model counts exactly what surgery removes."""
import sympy as sp
import torch

from conftest import half_plan
from fxprune.analysis.analyser import analyse
from fxprune.models.tiny import tiny_model
from fxprune.passes.base import Pass, PassContext, PassError, PassManager
from fxprune.passes.cost import L, build_cost_model
from fxprune.surgery import count_params, prune


def test_param_count_is_exact_after_surgery():
    for fam in ("llama", "qwen2", "gpt2", "mamba"):
        m = tiny_model(fam)
        a = analyse(m)
        cm = build_cost_model(m, a)
        assert cm.evaluate(cm.params, {}) == count_params(m)
        plan = half_plan(a, seed=4, vary=True)
        kept = {g: len(k) for g, k in plan.items()}
        want = cm.evaluate(cm.params, kept)
        prune(m, plan, a, verify=False)
        assert want == count_params(m), fam


def test_flops_and_kv_cache_of_gqa():
    m = tiny_model("llama")  # hidden 64, 4 q heads / 2 kv heads of 16, 2 layers
    a = analyse(m)
    cm = build_cost_model(m, a, kv_bytes=2)
    # KV cache per token: 2 layers x (k + v) x 2 kv heads x 16 x 2 bytes
    assert cm.evaluate(cm.kv_bytes_per_token, {}) == 2 * 2 * 32 * 2
    kept = {"model.layers.0.self_attn": 1}
    assert cm.evaluate(cm.kv_bytes_per_token, kept) == (2 * 16 + 2 * 32) * 2
    # removing one q head per KV group leaves the KV cache alone
    assert cm.evaluate(cm.kv_bytes_per_token, {"model.layers.0.self_attn:q_per_kv": 1}) == 2 * 2 * 32 * 2
    dense = cm.evaluate(cm.flops_per_token, {}, seq_len=128)
    assert dense == 2 * (cm.evaluate(cm.linear_params, {}) + 128 * 64) + 2 * 4 * 128 * 64  # + LM head
    assert sp.diff(cm.flops_per_token, L) != 0


class _Produce(Pass):
    name, ensures = "produce", ("x",)

    def run(self, ctx):
        ctx.facts["x"] = 1
        return {"ok": True}


class _Needs(Pass):
    name, requires = "needs_y", ("y",)

    def run(self, ctx):
        return {}


class _Liar(Pass):
    name, ensures = "liar", ("z",)

    def run(self, ctx):
        return {}


def test_pass_manager_contracts():
    ctx = PassManager([_Produce()]).run(PassContext(model=None))
    assert ctx["x"] == 1 and ctx.results[0].report == {"ok": True}
    try:
        PassManager([_Produce(), _Needs()]).run(PassContext(model=None))
        raise AssertionError("should fail")
    except PassError as e:
        assert e.pass_name == "needs_y" and e.before == ["produce"] and "['y']" in str(e)
    try:
        PassManager([_Produce(), _Liar()]).run(PassContext(model=None))
        raise AssertionError("should fail")
    except PassError as e:
        assert e.pass_name == "liar" and "did not produce ['z']" in str(e)


def test_decoder_linear_scope_excludes_embeddings_and_head():
    m = tiny_model("llama")  # hidden 64, q 64, k/v 32 each, ffn 96, 2 layers, vocab 128 (untied)
    cm = build_cost_model(m, analyse(m))
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96
    assert cm.evaluate(cm.linear_params, {}) == 2 * per_layer
    assert cm.evaluate(cm.params, {}) == count_params(m)
    assert cm.evaluate(cm.flops_per_token, {}, seq_len=1) == 2 * (2 * per_layer + 128 * 64) + 2 * 4 * 64


def test_compiled_evaluation_equals_exact_substitution():
    m = tiny_model("llama")
    a = analyse(m)
    cm = build_cost_model(m, a)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        kept = {gr.id: int(torch.randint(1, gr.units + 1, (1,), generator=g)) for gr in a.prunable()}
        for expr in (cm.params, cm.linear_params, cm.flops_per_token, cm.kv_bytes_per_token):
            assert cm.evaluate(expr, kept, seq_len=77) == cm.evaluate_exact(expr, kept, seq_len=77)
