"""``liar_block``: LIAR, then each residual-branch consumer refit so that the block's output moves to the
dense block's output (``passes/reconstruct/liar_block.py``). Tiny random models: mechanism only."""
import copy

import pytest
import torch

from fxprune.calibration.blocks import find_blocks
from fxprune.models.tiny import tiny_model
from fxprune.pipeline import prune_model
from fxprune.recipe import load_recipe
from fxprune.report import find_pass


def _recipe(reconstruction, **extra):
    return load_recipe({"criterion": "goa", "reconstruction": reconstruction, "allocation": "uniform",
                        "target": 0.4, "kinds": ["ffn"], "channel_multiple": 4, "calib_samples": 8,
                        "calib_seq_len": 16, **extra})


def _windows(n=8, L=16, seed=1):
    return torch.randint(5, 128, (n, L), generator=torch.Generator().manual_seed(seed))


def _block_out(model, ids):
    outs = []
    h = find_blocks(model).blocks[-1].register_forward_hook(lambda m, a, y: outs.append(y[0] if isinstance(y, tuple) else y))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return outs[0].double()


def _errors(layers, **extra):
    dense = tiny_model("llama", num_hidden_layers=layers)
    w = _windows()
    ref = _block_out(dense, w)
    errs, models, reports = {}, {}, {}
    for rec in ("liar", "liar_block"):
        m = models[rec] = copy.deepcopy(dense)
        reports[rec] = prune_model(m, _recipe(rec, **extra), w).report
        errs[rec] = float((_block_out(m, w) - ref).pow(2).sum())
    return errs, models, reports


def test_block_refit_is_liar_when_the_stream_is_dense():
    """One block: its inputs are the dense ones, and LIAR's fold already is the least-squares refit of
    the consumer's output on the kept inputs, so the refit has nothing left to correct."""
    errs, models, reports = _errors(1, damping=1e-8)
    rep = find_pass(reports["liar_block"], "reconstruct_blocks")
    assert rep["block_refit"] == 1 and rep["block_refit_skipped"] == []
    for (n, p), (_, q) in zip(models["liar"].named_parameters(), models["liar_block"].named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=n)


def test_block_refit_corrects_what_earlier_blocks_left():
    """Two blocks: block 1 sees the pruned stream. LIAR only predicts its removed inputs from its kept
    ones there; the refit moves the block's output to the dense model's, so the final hidden state is
    nearer the dense one (block 0 is the same in both runs: its stream is dense)."""
    errs, _, reports = _errors(2, damping=1e-6)
    assert find_pass(reports["liar_block"], "reconstruct_blocks")["block_refit"] == 2
    assert errs["liar_block"] < 0.9 * errs["liar"], errs


def test_block_refit_skips_a_consumer_behind_a_post_norm():
    """Gemma-3 normalises the FFN output before the residual add: ``Y + E`` is no target there, so the
    refit leaves ``down_proj`` at LIAR's fold (same weights as ``liar``) and says so."""
    from tests.test_quality_robust import _windows as gemma_windows, tiny_gemma
    w = gemma_windows(8)
    a, b = tiny_gemma(), tiny_gemma()
    res = prune_model(a, _recipe("liar_block"), w)
    prune_model(b, _recipe("liar"), w)
    rep = find_pass(res.report, "reconstruct_blocks")
    assert rep["block_refit"] == 0 if "block_refit" in rep else True
    assert sorted(rep["block_refit_skipped"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_refit_fields_are_checked():
    from fxprune.errors import RecipeError
    with pytest.raises(RecipeError, match="refit_damping"):
        _recipe("liar_block", refit_damping=-1)
    with pytest.raises(RecipeError, match="skip_first_token"):
        _recipe("liar_block", skip_first_token="yes")
    with pytest.raises(RecipeError, match="refit_scope"):
        _recipe("liar_block", refit_scope="everything")
    step = lambda rec, **kw: _recipe(rec, **kw).steps[0]  # noqa: E731
    assert step("liar_block").refit_ridge == 1.0  # its own default: a weak ridge overfits (quality7.md)
    assert step("goa").refit_ridge == 0.01 == step("goa").damping
    assert step("liar_block", refit_damping=0.3).refit_ridge == 0.3


def test_skip_first_token_reaches_every_calibration_run(monkeypatch):
    """``skip_first_token``: every block-wise run of the step (scores, probes, removal) excludes each
    window's first token from its statistics, and the pruned weights differ from the default's."""
    from fxprune.calibration import runner
    seen = []
    real = runner.run_blocks

    def spy(*a, **kw):
        seen.append(kw.get("exclude_first_token", False))
        return real(*a, **kw)

    monkeypatch.setattr(runner, "run_blocks", spy)
    import fxprune.calibration.engine as engine
    monkeypatch.setattr(engine, "run_blocks", spy)
    dense = tiny_model("llama", num_hidden_layers=2)
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_model(a, _recipe("liar", skip_first_token=True), _windows())
    assert seen and all(seen)
    seen.clear()
    prune_model(b, _recipe("liar"), _windows())
    assert seen and not any(seen)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_block_refit_gram_from_the_fold_statistics_equals_the_captured_one(monkeypatch):
    """The first consumer's Gram comes from the statistics the fold read (the kept inputs do not change
    when units are removed); accumulating it from the captured inputs gives the same weights."""
    import fxprune.passes.structured as structured
    real = structured.BlockRefit
    dense = tiny_model("llama", num_hidden_layers=2)
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_model(a, _recipe("liar_block", refit_damping=0.1), _windows())
    monkeypatch.setattr(structured, "BlockRefit", lambda *x, **kw: real(*x, **{**kw, "gram_from_stats": False}))
    prune_model(b, _recipe("liar_block", refit_damping=0.1), _windows())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # two code paths ran
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("family", ["gpt2", "opt", "mistral"])
def test_block_refit_runs_on_other_layouts(family):
    """GPT-2 (Conv1D c_proj), OPT (its FFN runs on [batch * tokens, d]) and Mistral: every block's FFN
    output projection is refit, and the last block's output moves nearer the dense one than LIAR's."""
    dense = tiny_model(family, **({"n_layer": 2} if family == "gpt2" else {"num_hidden_layers": 2}))
    w = _windows(L=16)
    ref = _block_out(dense, w)
    errs = {}
    for rec in ("liar", "liar_block"):
        m = copy.deepcopy(dense)
        res = prune_model(m, _recipe(rec), w)
        errs[rec] = float((_block_out(m, w) - ref).pow(2).sum())
    rep = find_pass(res.report, "reconstruct_blocks")
    assert rep["block_refit"] == 2 and rep["block_refit_skipped"] == [], rep
    assert errs["liar_block"] < errs["liar"], errs


def test_block_refit_outputs_equal_a_recomputed_block(monkeypatch):
    """The refit hands the runner the block's new outputs (old outputs + ``[x 1] delta``) instead of a
    recomputation: the pruned model is the same as when the runner recomputes them."""
    from fxprune.passes.ops import refit
    dense = tiny_model("llama", num_hidden_layers=3)
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_model(a, _recipe("liar_block"), _windows())
    real = refit.BlockRefit.apply

    def recompute(self, ctx, stats):
        real(self, ctx, stats)
        assert ctx.outputs is not None
        ctx.outputs = None

    monkeypatch.setattr(refit.BlockRefit, "apply", recompute)
    prune_model(b, _recipe("liar_block"), _windows())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def _refit_scope_run(family, scope, **extra):
    dense = tiny_model(family, **({"n_layer": 3} if family == "gpt2" else {"num_hidden_layers": 3}))
    w = _windows(L=16)
    m = copy.deepcopy(dense)
    res = prune_model(m, _recipe("liar_block", refit_scope=scope, **extra), w)
    err = float((_block_out(m, w) - _block_out(dense, w)).pow(2).sum())
    return dense, m, find_pass(res.report, "reconstruct_blocks"), err


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_stream_scope_refits_every_residual_writer_and_lands_nearer_dense(family):
    """``refit_scope: stream``: every block's attention output projection (the stream inside the block,
    ``h = x + o_proj(...)``) and FFN output projection (the block's output) is refit, pruned or not;
    the refit adds no parameters, and the last block's output lands nearer the dense one than with the
    pruned consumers alone."""
    _, a, rep_a, err_a = _refit_scope_run(family, "pruned", damping=1e-6)
    dense, b, rep_b, err_b = _refit_scope_run(family, "stream", damping=1e-6)
    assert rep_a["block_refit"] == 3 and rep_b["block_refit"] == 6, (rep_a, rep_b)
    assert rep_b["block_refit_skipped"] == []
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    assert err_b < 0.95 * err_a, (err_a, err_b)
    attn_out = {"llama": "self_attn.o_proj", "gpt2": "attn.c_proj", "opt": "self_attn.out_proj"}[family]
    blocks = find_blocks(b)
    changed = [not torch.equal(blocks.blocks[i].get_submodule(attn_out).weight,
                               find_blocks(dense).blocks[i].get_submodule(attn_out).weight) for i in range(3)]
    assert all(changed[1:]), changed  # blocks 1, 2 see a pruned stream: their attention output moved


def test_stream_scope_at_zero_pruning_is_the_dense_model():
    """Nothing removed: the stream is the dense one at every block, every target is what the layer
    already gives, and the refit (ridge towards the current weights) leaves the model as it was."""
    dense = tiny_model("llama", num_hidden_layers=2)
    m = copy.deepcopy(dense)
    prune_model(m, _recipe("liar_block", refit_scope="stream", target=0.0), _windows())
    w = _windows(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=w).logits, dense(input_ids=w).logits, rtol=1e-4, atol=1e-5)


def test_stream_scope_skips_writers_behind_post_norms():
    """Gemma-3 normalises both branches before their residual adds: no layer writes the stream
    unchanged, so the stream refit changes nothing beyond LIAR's fold."""
    from tests.test_quality_robust import _windows as gemma_windows, tiny_gemma
    w = gemma_windows(8)
    a, b = tiny_gemma(), tiny_gemma()
    prune_model(a, _recipe("liar_block", refit_scope="stream"), w)
    prune_model(b, _recipe("liar"), w)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_writes_stream_tells_the_mid_block_writer_from_the_others():
    from fxprune.calibration.blocks import capture_block_inputs
    from fxprune.calibration.runner import forward_kwargs
    from fxprune.passes.ops.refit import _adds_to_output, _writes_stream
    from fxprune.calibration.blocks import block_output
    m = tiny_model("llama", num_hidden_layers=1)
    block = find_blocks(m).blocks[0]
    inp = capture_block_inputs(m, block, forward_kwargs(m, {"input_ids": _windows()}))
    with torch.no_grad():
        out = block_output(block(*inp.args, **inp.kwargs))
    mid = {n for n, mod in block.named_modules() if isinstance(mod, torch.nn.Linear) and _writes_stream(block, mod, inp, out)}
    end = {n for n, mod in block.named_modules() if isinstance(mod, torch.nn.Linear) and _adds_to_output(block, mod, inp, out)}
    assert mid == {"self_attn.o_proj"} and end == {"mlp.down_proj"}, (mid, end)


def test_units_on_pruned_scores_each_block_on_its_pruned_stream():
    """``units_on: pruned``: the allocation's widths stay, but each block's units are chosen from scores
    on the stream the pruned blocks before it produce; with one block the stream is the dense one and
    the choice is the same as ``dense``'s, with two the second block's may differ."""
    from fxprune.report import find_pass
    m1, m2 = tiny_model("llama", num_hidden_layers=1), tiny_model("llama", num_hidden_layers=1)
    w = _windows()
    r1 = prune_model(m1, _recipe("liar", allocation="global"), w).report
    r2 = prune_model(m2, _recipe("liar", allocation="global", units_on="pruned"), w).report
    assert find_pass(r2, "reconstruct_blocks")["scored_on"] == "pruned stream, per block"
    assert find_pass(r1, "reconstruct_blocks")["scored_on"] == "dense stream"
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
    assert find_pass(r1, "allocate")["removed_params"] == find_pass(r2, "allocate")["removed_params"]


def test_allocation_samples_limits_the_allocation_statistics_only():
    """``allocation_samples``: the measured allocation's scores and probes read the first N windows
    (reported), the removal reads all; N = all windows is the default's model exactly, and a value
    that is no positive integer is refused."""
    from fxprune.errors import RecipeError
    dense = tiny_model("llama", num_hidden_layers=2)
    w = _windows()
    extra = {"allocation": "measured", "probe_samples": 2}
    a, b, c = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(dense)
    prune_model(a, _recipe("liar_block", **extra), w)
    prune_model(b, _recipe("liar_block", allocation_samples=8, **extra), w)
    rc = prune_model(c, _recipe("liar_block", allocation_samples=3, **extra), w).report
    assert find_pass(rc, "measure_loss")["allocation_windows"] == 3
    assert find_pass(rc, "reconstruct_blocks")["calibration_tokens"] == 8 * 16
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(RecipeError, match="allocation_samples"):
        _recipe("liar_block", allocation_samples=0)
