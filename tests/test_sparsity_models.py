"""Sparsifying tiny LLaMA and Mamba models end to end; recipes; save → stock reload."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from fxprune.errors import RecipeError
from fxprune.models.tiny import tiny_model
from fxprune.sparsity import NM, builtin_recipes, load_recipe, run_sparsity_recipe, save_sparse_model
from fxprune.sparsity.masks import mask_conforms


def _calib(vocab=128, n=3, L=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (2, L), generator=g) for _ in range(n)]


@pytest.mark.parametrize("family", ["llama", "mamba"])
@pytest.mark.parametrize("recipe", ["mrp-2of4", "mrp-60", "sparsegpt-4of8", "wanda-50", "magnitude-2of4"])
def test_tiny_models_keep_running_at_requested_sparsity(family, recipe):
    model = tiny_model(family, **({"time_step_rank": 8} if family == "mamba" else {}))
    rec = load_recipe(recipe)
    res = run_sparsity_recipe(model, rec, _calib())
    names = {l.name.rsplit(".", 1)[-1] for l in res.layers}
    if family == "mamba":
        assert {"in_proj", "x_proj", "dt_proj", "out_proj"} <= names
    else:
        assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    mods = dict(model.named_modules())
    for l in res.layers:
        assert not l.pattern.startswith("skipped"), l
        W = mods[l.name].weight
        pat = rec.layers.pattern_for(l.name, rec.pattern)
        if isinstance(pat, NM):
            assert mask_conforms(W == 0, pat), l.name
        else:  # exact count (row or layer); an update may add a few exact zeros, never remove one
            want = (round(pat.ratio * W.shape[1]) * W.shape[0] if pat.granularity == "row"
                    else round(pat.ratio * W.numel()))
            assert want <= int((W == 0).sum()) <= want + W.shape[0], l.name
    with torch.no_grad():
        logits = model(input_ids=_calib(n=1)[0]).logits
    assert torch.isfinite(logits).all()


def test_layers_that_cannot_carry_the_pattern_are_reported_skipped():
    model = tiny_model("mamba")  # dt_proj has in_features = time_step_rank = 4 < M = 8
    res = run_sparsity_recipe(model, load_recipe("mrp-4of8"), _calib())
    skipped = [l.name for l in res.layers if l.pattern.startswith("skipped")]
    assert skipped and all(n.endswith("dt_proj") for n in skipped)


def test_mamba_dt_proj_gets_its_hessian_from_x_proj():
    model = tiny_model("mamba")
    res = run_sparsity_recipe(model, load_recipe("mrp-2of4"), _calib())
    dt = [l for l in res.layers if l.name.endswith("dt_proj")]
    assert dt and all(l.output_error is not None and l.output_error > 0 for l in dt)


def test_nonuniform_overrides_and_recipe_errors(tmp_path):
    rec = {"method": "mrp", "sparsity": {"ratio": 0.5, "granularity": "row"},
           "layers": {"overrides": {"*.mlp.down_proj": 0.25}, "exclude": ["*.k_proj"]}}
    model = tiny_model("llama")
    res = run_sparsity_recipe(model, rec, _calib())  # a plain dict is accepted (the prune command's path)
    by = {l.name.rsplit(".", 2)[-2] + "." + l.name.rsplit(".", 1)[-1]: l for l in res.layers}
    assert abs(by["mlp.down_proj"].sparsity - 0.25) < 0.02 and abs(by["mlp.up_proj"].sparsity - 0.5) < 0.02
    assert "self_attn.k_proj" not in by
    with pytest.raises(RecipeError, match="bogus"):
        load_recipe({"method": "mrp", "sparsity": "2:4", "options": {"bogus": 1}})
    with pytest.raises(RecipeError, match="method"):
        load_recipe({"method": "nope", "sparsity": 0.5})
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"method": "wanda", "sparsity": "4:8"}))
    assert load_recipe(p).pattern == NM(4, 8)
    assert {"mrp-2of4", "mrp-50", "sparsegpt-2of4", "wanda-50"} <= set(builtin_recipes())


@pytest.mark.parametrize("family", ["llama", "mamba"])
def test_save_reload_with_stock_from_pretrained(tmp_path, family):
    model = tiny_model(family)
    res = run_sparsity_recipe(model, load_recipe("mrp-2of4"), _calib())
    out = tmp_path / "sparse"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a user's folder is never replaced (issue 14)
    from fxprune.errors import OutputError
    with pytest.raises(OutputError, match="not empty"):
        save_sparse_model(model, out, result=res)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    out = tmp_path / "sparse2"
    save_sparse_model(model, out, result=res)
    assert (out / "sparsity_report.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _calib(n=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, model(input_ids=ids).logits)
    w = dict(back.named_modules())[res.layers[0].name].weight
    assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


def test_sparsify_cli_on_tiny_model(tmp_path):
    from fxprune.cli import main
    calib = tmp_path / "c.jsonl"
    calib.write_text("\n".join(json.dumps({"text": "some calibration text number %d " % i * 5}) for i in range(20)))
    rc = main(["sparsify", "tiny:llama", "--recipe", "mrp-2of4", "--calib", str(calib), "--samples", "2",
               "--seqlen", "32", "--out", str(tmp_path / "o")])
    assert rc == 0
    rep = json.loads((tmp_path / "o" / "sparsity_report.json").read_text())
    assert abs(rep["sparsity_decoder_linears"] - 0.5) < 1e-9
    assert main(["sparsify", "tiny:llama", "--recipe", "nope", "--out", str(tmp_path / "x")]) == 2


def test_shared_inputs_share_one_hessian_and_others_do_not():
    from fxprune.sparsity import driver
    model = tiny_model("llama")
    block = model.model.layers[0]
    linears = driver._linears(block, "model.layers.0", load_recipe("mrp-50"))
    accs = {n: driver.HessianAccumulator(m.in_features, n) for n, m in linears.items()}
    hooks = driver._attach_stats(block, "model.layers.0", linears, accs)
    batches = driver._capture_block0_inputs(model, model.model.layers, _calib())
    for b in batches:
        driver._run_block(block, b)
    for h in hooks:
        h.remove()
    a = {n.rsplit(".", 1)[-1]: acc for n, acc in accs.items()}
    assert a["q_proj"] is a["k_proj"] is a["v_proj"] and a["gate_proj"] is a["up_proj"]
    assert a["q_proj"] is not a["gate_proj"] and a["o_proj"] is not a["q_proj"]
    assert a["q_proj"].n == a["gate_proj"].n == 3 * 2 * 24
    assert not torch.allclose(a["q_proj"].gram, a["gate_proj"].gram)
