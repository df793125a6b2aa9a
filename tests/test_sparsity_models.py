"""Sparsifying tiny LLaMA and Mamba models end to end; recipes; save → stock reload."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fxprune.errors import RecipeError
from fxprune.models.tiny import tiny_model
from fxprune.pipeline import prune_model
from fxprune.recipe import builtin_recipes, load_recipe
from fxprune.sparsity import NM, save_sparse_model
from fxprune.sparsity.masks import mask_conforms


def _calib(vocab=128, n=3, L=24, seed=0):
    """``n`` batches of 2 windows, as one [2n, L] tensor (the runner batches it by 2)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(0, vocab, (2, L), generator=g) for _ in range(n)])


def run_sparsity_recipe(model, recipe, windows):
    """A sparsity recipe on ``windows`` in batches of 2; returns (recipe, step report)."""
    from dataclasses import replace
    rec = load_recipe(recipe)
    rec = replace(rec, calibration=replace(rec.calibration, batch_size=2))
    out = prune_model(model, rec, windows)
    return rec, out.report["steps"][0]


@pytest.mark.parametrize("family", ["llama", "mamba"])
@pytest.mark.parametrize("recipe", ["mrp-2of4", "mrp-60", "sparsegpt-4of8", "wanda-50", "magnitude-2of4"])
def test_tiny_models_keep_running_at_requested_sparsity(family, recipe):
    model = tiny_model(family, **({"time_step_rank": 8} if family == "mamba" else {}))
    rec, res = run_sparsity_recipe(model, recipe, _calib())
    step = rec.steps[0]
    names = {l["name"].rsplit(".", 1)[-1] for l in res["layers"]}
    if family == "mamba":
        assert {"in_proj", "x_proj", "dt_proj", "out_proj"} <= names
    else:
        assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    mods = dict(model.named_modules())
    for l in res["layers"]:
        assert not l["pattern"].startswith("skipped"), l
        W = mods[l["name"]].weight
        pat = step.layers.pattern_for(l["name"], step.pattern)
        if isinstance(pat, NM):
            assert mask_conforms(W == 0, pat), l["name"]
        else:  # exact count (row or layer); an update may add a few exact zeros, never remove one
            want = (round(pat.ratio * W.shape[1]) * W.shape[0] if pat.granularity == "row"
                    else round(pat.ratio * W.numel()))
            assert want <= int((W == 0).sum()) <= want + W.shape[0], l["name"]
    with torch.no_grad():
        logits = model(input_ids=_calib(n=1)).logits
    assert torch.isfinite(logits).all()


def test_layers_that_cannot_carry_the_pattern_are_reported_skipped():
    model = tiny_model("mamba")  # dt_proj has in_features = time_step_rank = 4 < M = 8
    _, res = run_sparsity_recipe(model, "mrp-4of8", _calib())
    skipped = [l["name"] for l in res["layers"] if l["pattern"].startswith("skipped")]
    assert skipped and all(n.endswith("dt_proj") for n in skipped)


def test_mamba_dt_proj_gets_its_hessian_from_x_proj():
    model = tiny_model("mamba")
    _, res = run_sparsity_recipe(model, "mrp-2of4", _calib())
    dt = [l for l in res["layers"] if l["name"].endswith("dt_proj")]
    assert dt and all(l["output_error"] is not None and l["output_error"] > 0 for l in dt)


def test_nonuniform_overrides_and_recipe_errors(tmp_path):
    rec = {"method": "mrp", "sparsity": {"ratio": 0.5, "granularity": "row"},
           "layers": {"overrides": {"*.mlp.down_proj": 0.25}, "exclude": ["*.k_proj"]}}
    model = tiny_model("llama")
    _, res = run_sparsity_recipe(model, rec, _calib())  # a legacy flat dict is accepted
    by = {l["name"].rsplit(".", 2)[-2] + "." + l["name"].rsplit(".", 1)[-1]: l for l in res["layers"]}
    assert abs(by["mlp.down_proj"]["sparsity"] - 0.25) < 0.02 and abs(by["mlp.up_proj"]["sparsity"] - 0.5) < 0.02
    assert "self_attn.k_proj" not in by
    with pytest.raises(RecipeError, match="bogus"):
        load_recipe({"method": "mrp", "sparsity": "2:4", "options": {"bogus": 1}})
    with pytest.raises(RecipeError, match="unknown step kind 'nope'"):
        load_recipe({"method": "nope", "sparsity": 0.5})
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"method": "wanda", "sparsity": "4:8"}))
    assert load_recipe(p).steps[0].pattern == NM(4, 8)
    assert {"mrp-2of4", "mrp-50", "sparsegpt-2of4", "wanda-50"} <= set(builtin_recipes())


@pytest.mark.parametrize("family", ["llama", "mamba"])
def test_save_reload_with_stock_from_pretrained(tmp_path, family):
    model = tiny_model(family)
    _, res = run_sparsity_recipe(model, "mrp-2of4", _calib())
    out = tmp_path / "sparse"
    out.mkdir()
    report = {"params_before": 1, "params_after": 1, "seconds": 0, "steps": [res]}
    (out / "notes.txt").write_text("mine")  # a user's folder is never replaced (issue 14)
    from fxprune.errors import OutputError
    with pytest.raises(OutputError, match="not empty"):
        save_sparse_model(model, out, result=report)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    out = tmp_path / "sparse2"
    save_sparse_model(model, out, result=report)
    assert (out / "sparsity_report.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _calib(n=1)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, model(input_ids=ids).logits)
    w = dict(back.named_modules())[res["layers"][0]["name"]].weight
    assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


def test_sparsify_cli_on_tiny_model(tmp_path):
    from fxprune.cli import main
    calib = tmp_path / "c.jsonl"
    calib.write_text("\n".join(json.dumps({"text": "some calibration text number %d " % i * 5}) for i in range(20)))
    rc = main(["sparsify", "tiny:llama", "--recipe", "mrp-2of4", "--calib", str(calib), "--calib-samples", "2",
               "--calib-seq-len", "32", "--out", str(tmp_path / "o")])
    assert rc == 0
    rep = json.loads((tmp_path / "o" / "fxprune_report.json").read_text())
    assert abs(rep["steps"][0]["passes"][-1]["sparsity_selected_linears"] - 0.5) < 1e-9
    assert main(["sparsify", "tiny:llama", "--recipe", "nope", "--out", str(tmp_path / "x")]) == 2


def test_shared_inputs_compute_one_gram_and_others_do_not():
    """q/k/v read one tensor and gate/up another: each Gram is computed once per batch (observers
    share it), and the sums still equal a separate computation for every module."""
    from fxprune.calibration import Accumulation, Stat, StatsRequest, calibrate_layerwise, calibrate_whole
    from fxprune.calibration.observers import _MaskSource
    model = tiny_model("llama")
    names = [f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")]
    req = StatsRequest.for_modules(names, [Stat.INPUT_GRAM], accumulation=Accumulation.MIXED)
    batches = [{"input_ids": b} for b in _calib().split(2)]
    calls = []
    orig = _MaskSource.shared

    def counting(self, x, key, acc, compute):
        return orig(self, x, key, acc, lambda: calls.append(key) or compute())
    _MaskSource.shared = counting
    try:
        stats = calibrate_layerwise(model, batches, req, progress=False)
    finally:
        _MaskSource.shared = orig
    assert calls.count("gram") == 3 * len(batches)  # attention input, o_proj input, MLP input
    a = {n.rsplit(".", 1)[-1]: stats[n] for n in names}
    assert torch.equal(a["q_proj"].gram, a["k_proj"].gram) and torch.equal(a["gate_proj"].gram, a["up_proj"].gram)
    assert not torch.allclose(a["q_proj"].gram, a["gate_proj"].gram)
    assert a["q_proj"].count == a["gate_proj"].count == 3 * 2 * 24
    whole = calibrate_whole(model, batches, req, progress=False)
    for n in names:
        torch.testing.assert_close(stats[n].gram, whole[n].gram, rtol=1e-6, atol=1e-8)
