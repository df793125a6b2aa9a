"""Mixture-of-experts and Mamba-2 group kinds: found from the graph, pruned, scored, costed."""
import copy

import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.errors import PlanError
from fxprune.kinds import Kind
from fxprune.models.zoo import random_uniform_plan, tiny_zoo_model
from fxprune.surgery import apply_mask, count_params, prune


def logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


@pytest.fixture(scope="module")
def mixtral():
    m = tiny_zoo_model("mixtral")  # 4 experts, top-2, expert width 96
    return m, analyse(m)


def members(g):
    return {(m.param.split(".mlp.")[1], m.dim, m.role) for m in g.members}


def test_experts_and_expert_channels_are_groups(mixtral):
    _, a = mixtral
    ex = a.group("model.layers.0.mlp:experts")
    assert (ex.kind, ex.units, ex.detail["top_k"], ex.detail["min_keep"]) == (Kind.MOE_EXPERTS, 4, 2, 2)
    assert members(ex) == {("gate.weight", 0, "producer"), ("experts.gate_up_proj", 0, "expert"),
                           ("experts.down_proj", 0, "expert")}
    ch = a.group("model.layers.0.mlp.experts")
    assert (ch.kind, ch.units, ch.detail["multiple"]) == (Kind.MOE_FFN, 96, 8)
    assert members(ch) == {("experts.gate_up_proj", 1, "producer"), ("experts.down_proj", 2, "consumer")}
    gu = next(m for m in ch.members if m.param.endswith("gate_up_proj"))
    assert gu.indices(96, [5]).tolist() == [5, 101]  # the gate and up halves of channel 5


def test_removing_experts_equals_masking_their_router_logit(mixtral, ids):
    m0, a = mixtral
    m = copy.deepcopy(m0)
    plan = {"model.layers.0.mlp:experts": [0, 2, 3], "model.layers.1.mlp:experts": [1, 3],
            "model.layers.1.mlp.experts": list(range(0, 96, 2))}
    ref = apply_mask(copy.deepcopy(m0), a, plan)
    r = prune(m, plan, a)
    assert torch.allclose(logits(m, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(m0, ids), logits(ref, ids), atol=1e-4)
    layer0, layer1 = m.model.layers[0].mlp, m.model.layers[1].mlp
    assert layer0.experts.gate_up_proj.shape == (3, 192, 64) and layer1.experts.down_proj.shape == (2, 64, 48)
    assert (layer0.gate.weight.shape[0], layer0.experts.num_experts, layer0.gate.num_experts) == (3, 3, 3)
    assert r.params_before - r.params_after == (192 * 64 + 64 * 96 + 64) + 2 * (192 * 64 + 64 * 96 + 64) \
        + 2 * (96 * 64 + 64 * 48)
    p = ids[:1, :5]
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(m.generate(p, use_cache=True, **kw), m.generate(p, use_cache=False, **kw))


def test_plans_respect_top_k_and_kernel_alignment(mixtral):
    _, a = mixtral
    with pytest.raises(PlanError, match="at least 2"):
        prune(copy.deepcopy(mixtral[0]), {"model.layers.0.mlp:experts": [1]}, a)
    with pytest.raises(PlanError, match="multiple of 8"):
        prune(copy.deepcopy(mixtral[0]), {"model.layers.0.mlp.experts": list(range(50))}, a)


def test_unrouted_expert_goes_first():
    """Every criterion scores experts by how often the router chose them on the calibration data."""
    from fxprune.calibration.observers import ModuleStats
    from fxprune.passes.allocate import top_units
    from fxprune.passes.criteria import get_criterion
    m = tiny_zoo_model("mixtral")
    g = analyse(m).group("model.layers.0.mlp:experts")
    stats = {"model.layers.0.mlp.gate": ModuleStats(count=10, routed=torch.tensor([6.0, 0.0, 9.0, 5.0]))}
    for name in ("wanda_sp", "flap", "magnitude", "routing"):
        s = get_criterion(name).score(g, m, stats)
        assert top_units(s, 3) == [0, 2, 3], name


def test_routing_counts_are_observed():
    """Stat.ROUTED on a router module counts its top-k choices (checked against the router itself)."""
    from fxprune.calibration.observers import Stat, StatsCollector, StatsRequest
    m = tiny_zoo_model("mixtral")
    ids = torch.randint(5, 120, (3, 11), generator=torch.Generator().manual_seed(0))
    req = StatsRequest({"model.layers.1.mlp.gate": {Stat.ROUTED}})
    got = []
    h = m.model.layers[1].mlp.gate.register_forward_hook(lambda mod, a, out: got.append(out[2]))
    with StatsCollector(m, req) as col, torch.no_grad():
        col.set_token_mask(None)
        m(input_ids=ids)
    h.remove()
    want = torch.bincount(got[0].reshape(-1), minlength=4).double()
    assert torch.equal(col.result()["model.layers.1.mlp.gate"].routed, want) and want.sum() == 3 * 11 * 2


def test_cost_model_counts_experts(mixtral):
    """Removing experts saves parameters but no expert FLOPs (each token still runs top-k experts;
    only the router's rows go); narrowing expert channels saves both. Checked against the pruned model."""
    from fxprune.passes.cost import build_cost_model
    m0, a = mixtral
    cm = build_cost_model(m0, a)
    ex, ch = "model.layers.0.mlp:experts", "model.layers.0.mlp.experts"
    f0 = cm.evaluate(cm.flops_per_token, {}, seq_len=16)
    assert f0 - cm.evaluate(cm.flops_per_token, {ex: 2}, seq_len=16) == 2 * 2 * 64  # two router rows
    assert f0 - cm.evaluate(cm.flops_per_token, {ch: 48}, seq_len=16) == 2 * 2 * 48 * (2 * 64 + 64)
    m = copy.deepcopy(m0)
    plan = {ex: [0, 1], ch: list(range(48))}
    prune(m, plan, a, verify=False)
    assert cm.evaluate(cm.params, {ex: 2, ch: 48}) == count_params(m)


def test_mamba2_head_groups(ids):
    """Mamba-2: the gated RMSNorm normalises each group of heads, so a whole group (its z, x, B, C, dt
    rows, conv channels, A_log, D, norm and out_proj columns) is the unit; heads and channels inside
    a group are reported with the norm as the reason."""
    m = tiny_zoo_model("mamba2")  # 8 heads of 16 in 2 groups
    a = analyse(m)
    g = a.group("backbone.layers.0.mixer")
    assert (g.kind, g.units, g.unit_size) == (Kind.SSM_HEADS, 2, 64) and g.prunable
    inner = [x for x in a.groups if x.module == "backbone.layers.0.mixer" and x.kind in (Kind.SSM_HEADS, Kind.SSM)
             and x.id != g.id]
    assert inner and all(not x.prunable and "norm" in x.blocked_by[0] for x in inner)
    segs = sorted((x.offset, x.size) for x in g.members if x.param.endswith("in_proj.weight"))
    assert segs == [(0, 128), (128, 128), (256, 16), (272, 16), (288, 8)]  # z, x, B, C, dt
    plan = {"backbone.layers.0.mixer": [1], "backbone.layers.1.mixer": [0]}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    prune(m, plan, a)
    assert torch.allclose(logits(m, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)
    mixer = m.backbone.layers[0].mixer
    assert (mixer.num_heads, mixer.n_groups, mixer.intermediate_size) == (4, 1, 64)
    p = ids[:1, :5]
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(m.generate(p, use_cache=True, **kw), m.generate(p, use_cache=False, **kw))


def test_hybrid_stack_prunes_every_kind(ids):
    """Jamba: attention, Mamba and mixture-of-experts layers in one stack, every kind in one plan."""
    m = tiny_zoo_model("jamba")
    a = analyse(m)
    kinds = {g.kind for g in a.prunable()}
    assert {Kind.SSM, Kind.ATTN_KV_GROUPS, Kind.MOE_EXPERTS, Kind.MOE_FFN, Kind.FFN} <= kinds
    plan = random_uniform_plan(a, seed=4)
    assert {a.group(gid).kind for gid in plan} >= {Kind.SSM, Kind.MOE_EXPERTS, Kind.FFN}
    ref = apply_mask(copy.deepcopy(m), a, plan)
    prune(m, plan, a)
    assert torch.allclose(logits(m, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_pipeline_prunes_experts_and_ssm_heads(allocation):
    """The structured pipeline selects, scores, allocates and removes the new kinds (MoE on
    Mixtral, SSM head groups on Mamba-2) and meets its budget; reconstruction folds what it can."""
    import fxprune
    from fxprune.report import find_pass
    windows = torch.randint(5, 120, (8, 16), generator=torch.Generator().manual_seed(0))
    for family, kinds in (("mixtral", ["experts", "ffn"]), ("mamba2", ["ssm"])):
        over = {"n_groups": 4} if family == "mamba2" else {}  # 4 groups of 2 heads: 25% steps
        m = tiny_zoo_model(family, **over)
        r = {"calibration": {"batch_size": 4},
             "steps": [{"structured": {"criterion": "wanda_sp", "reconstruction": "liar", "allocation": allocation,
                                       "target": 0.25, "scope": "decoder_linear", "kinds": kinds}}]}
        out = fxprune.prune(m, r, windows)
        a = analyse(tiny_zoo_model(family, **over))
        got = {a.group(gid).kind for gid in out.plan}
        want = {Kind.MOE_EXPERTS, Kind.MOE_FFN} if family == "mixtral" else {Kind.SSM_HEADS}
        assert got == want, (family, got)
        alloc = find_pass(out.report, "allocate")
        assert abs(alloc["achieved"] - 0.25) < 0.12, (family, alloc)
        for gid, keep in out.plan.items():
            g = a.group(gid)
            assert len(keep) >= g.detail.get("min_keep", 1) and (len(keep) % g.detail.get("multiple", 1) == 0)


def test_router_bias_buffer_is_sliced_with_its_experts(ids, tmp_path):
    """DeepSeek-V3's router adds a persistent per-expert ``e_score_correction_bias`` buffer before
    its top-k: it belongs to the expert group (sliced with the router rows, saved and reloaded with
    the recorded structure), not a reason to keep every expert."""
    from fxprune.checkpoint import load_pruned, save_pruned
    m0 = tiny_zoo_model("deepseek_v3")
    a = analyse(m0)
    g = a.group("model.layers.1.mlp:experts")
    assert g.kind == Kind.MOE_EXPERTS and g.prunable and g.units == 4
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert (bias, 0, "scale") in {(x.param, x.dim, x.role) for x in g.members}
    with torch.no_grad():
        m0.get_buffer(bias).copy_(torch.tensor([0.3, 0.5, -0.1, 0.0]))  # expert 1 is picked
    plan = {g.id: [0, 2, 3]}
    ref = apply_mask(copy.deepcopy(m0), a, plan)
    m = copy.deepcopy(m0)
    prune(m, plan, a)
    assert m.get_buffer(bias).tolist() == pytest.approx([0.3, -0.1, 0.0])
    assert torch.allclose(logits(m, ids), logits(ref, ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(m0, ids), logits(ref, ids), atol=1e-4)
    back = load_pruned(save_pruned(m, tmp_path / "p"))
    assert torch.equal(back.get_buffer(bias), m.get_buffer(bias))
    assert torch.allclose(logits(back, ids), logits(m, ids), atol=1e-6)
