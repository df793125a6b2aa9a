"""Issue 13 lever: the ``measured`` allocation (per-group cost curves measured on the calibration loss)."""
import copy

import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.calibration import Engine
from fxprune.calibration.runner import Stream
from fxprune.errors import RecipeError
from fxprune.evaluation.perplexity import perplexity
from fxprune.models.tiny import tiny_model
from fxprune.passes.allocate import top_units
from fxprune.passes.allocate_pooled import measured_costs
from fxprune.passes.consumers import stats_request
from fxprune.passes.criteria import get_criterion
from fxprune.passes.ops.probe import ProbeLoss, probe_counts
from fxprune.passes.ops.remove_units import consumer_layers
from fxprune.passes.reconstruct import get_reconstructor
from fxprune.pipeline import prune_model
from fxprune.recipe import load_recipe
from fxprune.report import find_pass
from fxprune.surgery import prune

from test_quality_robust import _rescale_down, _windows, tiny_gemma


def _recipe(**fields):
    step = {"criterion": "goa", "reconstruction": "liar", "allocation": "measured", "target": 0.25,
            "kinds": ["ffn"], "channel_multiple": 4, "probe_precision": "32", **fields}
    return load_recipe({"steps": [{"structured": step}]})


def _w(n=8, L=24, seed=0):
    return torch.randint(0, 128, (n, L), generator=torch.Generator().manual_seed(seed))


def test_probe_counts_round_the_kept_width_to_the_multiple():
    assert probe_counts(96, (0.125, 0.25, 0.5, 0.75), 8) == [16, 24, 48, 72]
    assert probe_counts(2, (0.25, 0.5, 0.75), 1) == [1]  # duplicates dropped, never all units
    assert probe_counts(10, (0.99,), 8) == [2]           # at least the multiple stays


def test_measured_costs_interpolate_stop_at_the_last_probe_and_stay_nondecreasing():
    c = measured_costs([(2, 1.0), (4, 3.0)], 6)  # nothing offered past the largest probe
    torch.testing.assert_close(c, torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64))
    c = measured_costs([(2, -0.5), (4, 2.0), (6, 1.0)], 6)  # a gain is clipped, a dip is flattened
    assert c.tolist() == [0.0, 0.0, 0.75, 2.0, 2.0, 2.0]


def test_no_group_loses_more_than_its_largest_probe_and_an_unreachable_target_is_refused():
    m = tiny_model("llama")
    w = _w()
    res = prune_model(copy.deepcopy(m), _recipe(target=0.25, probe_ratios=[0.25, 0.5]), w)
    assert res.plan and all(len(k) >= 96 // 2 for k in res.plan.values())
    with pytest.raises(Exception, match="probe_ratios"):
        prune_model(copy.deepcopy(m), _recipe(target=0.35, probe_ratios=[0.25, 0.5]), w)


def _nll(model, w):
    r = perplexity(model, w, batch_size=4, progress=False)
    return r.nll / r.tokens


def test_probe_cost_is_the_loss_of_the_sliced_model_and_the_model_is_restored():
    """The probe's cost for a group and ratio equals the loss increase of the model actually pruned to
    that plan (LIAR fold, then surgery), and the probe leaves every parameter as it found it."""
    m = tiny_model("llama")
    w = _w()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    a = analyse(m)
    gid = "model.layers.0.mlp"
    crit, rec = get_criterion("goa"), get_reconstructor("liar")
    base = _nll(m, w)
    op = ProbeLoss(m, a, {0: [gid]}, crit, rec, 0.01, (0.25, 0.5), 4, lambda skip=None: _nll(m, w))
    Engine().run_blocks(m, w, [op], batch_size=4, stream=Stream.DENSE)
    assert {n for n, _ in m.named_parameters()} == set(before)  # no bias left behind by the folds
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]), n
    assert op.base == pytest.approx(base, abs=1e-7)
    (k1, c1), (k2, c2) = op.curves[gid]
    assert (k1, k2) == (24, 48) and c1 != c2  # tiny llama FFN: 96 channels
    # the same removal done for real on a copy: block 0's dense-stream statistics, fold, slice
    g = a.group(gid)
    for k, c in op.curves[gid]:
        assert _nll(_sliced(m, a, g, op.scores[gid], k, w), w) - base == pytest.approx(c, abs=1e-5)


def _sliced(m, a, g, scores, k, w):
    """A copy of ``m`` with group ``g`` really pruned by ``k`` units the way a probe does it: the dense
    statistics on ``w``, LIAR's fold, then slicing."""
    rec = get_reconstructor("liar")
    out = copy.deepcopy(m)
    stats = Engine().calibrate(out, w, stats_request([g], rec.needs), batch_size=4)
    keep = top_units(scores, g.units - k)
    for layer, mask in consumer_layers(out, a, {g.id: keep}):
        rec.fold(layer, mask, stats, 0.01)
    prune(out, {g.id: keep}, a)
    return out


def _probe(m, w, gid, blocks):
    from contextlib import nullcontext
    calls = []

    def loss(skip=None):
        calls.append(skip is not None)
        with skip or nullcontext():
            r = perplexity(m, w, batch_size=4, progress=False)
        return r.nll / r.tokens
    op = ProbeLoss(m, analyse(m), {1: [gid]}, get_criterion("goa"), get_reconstructor("liar"), 0.01, (0.25, 0.5),
                   4, loss, blocks, w.shape[0])
    Engine().run_blocks(m, w, [op], batch_size=4, stream=Stream.DENSE)
    op.calls = calls
    return op


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_probe_skipping_the_blocks_before_equals_the_whole_forward(family):
    """Block 1's probes skip block 0 (its outputs are the runner's block-1 inputs): the same costs as
    running the whole model, and every block runs its own forward again afterwards."""
    from fxprune.calibration import find_blocks
    m = tiny_model(family)
    w = _w(6)  # 6 probe rows over batches of 4: the second batch is partial
    a = analyse(m)
    gid = next(g.id for g in a.prunable() if find_blocks(m).index_of(g.module) == 1 and "attn" not in g.id)
    with torch.no_grad():
        ref = m(input_ids=w).logits
    whole = _probe(m, w, gid, None)
    skipped = _probe(m, w, gid, find_blocks(m))
    assert skipped.blocks is not None and skipped.prefix_check < 1e-6
    # the skipped blocks return what they returned in the dense base's own forward: the check finds the two
    # equal, so block 1 needs no base of its own (dense base, check, two probes)
    assert skipped.exact and skipped.calls == [False, True, True, True]
    for (k1, c1), (k2, c2) in zip(whole.curves[gid], skipped.curves[gid]):
        assert k1 == k2 and c1 == pytest.approx(c2, abs=1e-6)
    assert not any("forward" in vars(b) for b in find_blocks(m).blocks)
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=w).logits, ref, rtol=0, atol=0)


def test_measured_allocation_takes_the_budget_where_the_loss_does_not_move():
    """Layer 0's FFN is made nearly silent: removing its channels costs almost nothing in loss, so the
    measured allocation takes the budget there; per-layer z-scores (global) see two alike layers."""
    m = tiny_model("llama")
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight.mul_(1e-3)
    w = _w(16)
    res = prune_model(copy.deepcopy(m), _recipe(), w)
    kept = {g: len(k) for g, k in res.plan.items()}
    # layer 0 goes down to its largest probe (75% of 96 removed), layer 1 gives only the remainder
    assert kept["model.layers.0.mlp"] == 24 and kept.get("model.layers.1.mlp", 96) >= 96 - 16
    glob = prune_model(copy.deepcopy(m), _recipe(allocation="global"), w)
    assert {g: len(k) for g, k in glob.plan.items()} != kept
    alloc = find_pass(res.report, "allocate")
    assert alloc["removed_params"] >= 0.2 * alloc["in_scope_params"]
    probe = find_pass(res.report, "measure_loss")
    assert probe["probes"] == 2 * 4 and set(probe["curves"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}


def test_measured_allocation_at_target_zero_is_the_dense_model():
    m = tiny_model("llama")
    w = _w()
    ref = m(input_ids=w).logits
    res = prune_model(m, _recipe(target=0.0), w)
    assert res.plan == {}
    torch.testing.assert_close(m(input_ids=w).logits, ref, rtol=0, atol=0)


def test_measured_allocation_is_invariant_to_a_rescaling_the_post_norm_undoes():
    """Gemma-like post-FFN norms: scaling a layer's down_proj changes no output, so no loss, so no plan."""
    w = _windows()
    base = prune_model(tiny_gemma(), _recipe(target=0.2), w).plan
    assert base
    m = tiny_gemma()
    _rescale_down(m, [0.25, 8.0])
    assert {g: len(k) for g, k in prune_model(m, _recipe(target=0.2), w).plan.items()} == \
        {g: len(k) for g, k in base.items()}


@pytest.mark.parametrize("fields, message", [
    ({"probe_ratios": [0.0, 0.5]}, "probe_ratios"),
    ({"probe_ratios": []}, "probe_ratios"),
    ({"probe_ratios": "half"}, "probe_ratios"),
    ({"probe_samples": 0}, "probe_samples"),
    ({"probe_precision": "fp8"}, "probe_precision"),
    ({"probe_metric": "ppl"}, "probe_metric"),
])
def test_bad_probe_fields_are_refused(fields, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(**fields)


def test_measured_allocation_refuses_olica_attention():
    with pytest.raises(RecipeError, match="allocation"):
        _recipe(attention="olica", kinds=["attention", "ffn"])


def test_measured_allocation_refuses_a_model_without_an_lm_head():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    m = BertModel(cfg).eval()
    from fxprune.errors import FxPruneError
    with pytest.raises(FxPruneError, match="measure_loss.*BertModel returns no next-token logits"):
        prune_model(m, _recipe(), _w())


def test_skip_prefix_walks_the_batches_and_puts_back_a_forward_the_block_had_of_its_own():
    from fxprune.passes.sensitivity import SkipPrefix
    blocks = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    own = blocks[0].forward  # a bound method set on the instance, as accelerate's hooks do
    blocks[0].forward = own
    hidden = torch.arange(6.0).reshape(3, 2)
    with SkipPrefix(blocks, hidden, torch.zeros(1)):
        assert torch.equal(blocks[0](torch.zeros(2, 2)), hidden[:2])  # the first batch: rows 0-1
        assert torch.equal(blocks[1](torch.zeros(2, 2)), hidden[:2])  # later skipped blocks: the same rows
        assert torch.equal(blocks[0](torch.zeros(1, 2)), hidden[2:])  # the next batch: row 2
    assert vars(blocks[0])["forward"] is own and "forward" not in vars(blocks[1])


def test_soft_nll_differences_are_kl_divergences_from_the_reference():
    """``soft_nll(q) - soft_nll(p)`` against p's stored distributions is KL(p || q) per token (p's entropy
    cancels), and a model scored against its own distributions has the smallest soft NLL."""
    import torch.nn.functional as F
    from fxprune.evaluation.divergence import reference_probs, soft_nll
    p, q = tiny_model("llama"), tiny_model("llama")
    with torch.no_grad():
        q.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    w = _w(6)
    ref = reference_probs(p, w, batch_size=4)
    assert [r.shape[0] for r in ref] == [4, 2] and ref[0].dtype == torch.bfloat16
    pr = torch.cat(ref).float()  # the stored (bf16-rounded) reference probabilities
    with torch.no_grad():
        lq = F.log_softmax(q(input_ids=w).logits[:, :-1].float(), -1)
        lpp = F.log_softmax(p(input_ids=w).logits[:, :-1].float(), -1)
    assert float((pr.sum(-1) - 1).abs().max()) < 1e-2
    kl = (pr * (lpp - lq)).sum(-1).mean()  # KL(p||q) - KL(p||p) against the stored reference
    d = soft_nll(q, w, ref, batch_size=4) - soft_nll(p, w, ref, batch_size=4)
    assert d == pytest.approx(float(kl), rel=1e-4) and d > 1e-4
    assert soft_nll(p, w, ref, batch_size=4) == pytest.approx(float(-(pr * lpp).sum(-1).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="reference batch 0"):
        soft_nll(q, w, ref, batch_size=2)


def test_kl_probe_cost_is_the_kl_increase_of_the_sliced_model():
    """With ``probe_metric: kl`` a probe's cost is the increase, over the dense model, of the sliced
    model's cross-entropy against the dense distributions; the plan still reaches the target."""
    from fxprune.evaluation.divergence import reference_probs, soft_nll
    m = tiny_model("llama")
    w = _w()
    a = analyse(m)
    gid = "model.layers.1.mlp"
    ref = reference_probs(m, w, batch_size=4)
    crit, rec = get_criterion("goa"), get_reconstructor("liar")
    op = ProbeLoss(m, a, {1: [gid]}, crit, rec, 0.01, (0.25, 0.5), 4,
                   lambda skip=None: soft_nll(m, w, ref, batch_size=4))
    Engine().run_blocks(m, w, [op], batch_size=4, stream=Stream.DENSE)
    base = soft_nll(m, w, ref, batch_size=4)
    g = a.group(gid)
    for k, c in op.curves[gid]:
        pruned = _sliced(m, a, g, op.scores[gid], k, w)
        assert soft_nll(pruned, w, ref, batch_size=4) - base == pytest.approx(c, abs=1e-5) and c > 0
    res = prune_model(copy.deepcopy(m), _recipe(probe_metric="kl"), w)
    probe = find_pass(res.report, "measure_loss")
    assert probe["probe_metric"] == "kl" and probe["probes"] == 2 * 4
    alloc = find_pass(res.report, "allocate")
    assert alloc["removed_params"] >= 0.25 * alloc["in_scope_params"] * 0.99


def test_measured_allocation_runs_a_criterion_with_a_pass_of_its_own():
    """fisher_obs needs its gradient pass before scoring: the measured allocation runs it too (it raised
    'prepare() has not run' before), and its plan removes what the target asks."""
    m = tiny_model("llama")
    res = prune_model(copy.deepcopy(m), _recipe(criterion="fisher_obs"), _w())
    alloc = find_pass(res.report, "allocate")
    assert abs(alloc["achieved"] - 0.25) < 0.03 and res.plan
