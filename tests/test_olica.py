"""Olica as passes: V/O rotation is exact, low-rank Q/K at full rank is exact, linear calibration never
raises the FFN error it fits, the ratio split is exact, and the result generates, saves, reloads and
re-captures (tiny models; quality is measured in bench/olica.py on SmolLM2)."""
import copy

import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.calibration import calibrate_whole
from fxprune.checkpoint import load_pruned, save_pruned
from fxprune.errors import FxPruneError, RecipeError
from fxprune.models.tiny import tiny_model
from fxprune.passes.olica import lincal
from fxprune.passes.olica.attention import attention_parts
from fxprune.passes.olica.lowrank import factorise, saving_rank
from fxprune.passes.olica.split import ratios
from fxprune.passes.olica.vo import rotate_vo
from fxprune.passes.ops.olica_attention import attention_request
from fxprune.pipeline import prune_model
from fxprune.recipe import load_recipe
from fxprune.report import find_pass
from fxprune.steps.structured import StructuredStep
from fxprune.surgery import count_params


def _ids(n=4, L=12, seed=0):
    return torch.randint(5, 128, (n, L), generator=torch.Generator().manual_seed(seed))


def _out(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


@pytest.mark.parametrize("family", ["llama", "opt", "bert"])
def test_vo_rotation_alone_is_exact(family):
    m = tiny_model(family)
    ids = _ids()
    ref = _out(m, ids)
    a = analyse(m)
    parts = attention_parts(a)
    assert len(parts) == 2, parts.keys()
    stats = calibrate_whole(m, [{"input_ids": ids}], attention_request(parts.values(), False),
                            progress=False)
    before = {p.v_weight: m.get_parameter(p.v_weight).detach().clone() for p in parts.values()}
    for p in parts.values():
        scores = rotate_vo(m, p, stats)
        assert (scores[:, :-1] >= scores[:, 1:]).all()  # best channel first in every KV group
    assert all(not torch.allclose(m.get_parameter(k), v) for k, v in before.items())  # it did rotate
    torch.testing.assert_close(_out(m, ids), ref, atol=1e-5, rtol=1e-5)


def test_gqa_rotation_is_shared_per_kv_group():
    m = tiny_model("llama")  # 4 q heads, 2 kv heads
    p = attention_parts(analyse(m))["model.layers.0.self_attn"]
    assert p.v_kv.tolist() == [0] * 16 + [1] * 16
    assert p.o_kv.tolist() == [0] * 32 + [1] * 32  # q heads 0,1 read kv head 0
    assert sorted(w.split(".")[-2] for w in p.qk_weights) == ["k_proj", "q_proj"]


@pytest.mark.parametrize("family", ["llama", "opt", "bert"])
def test_low_rank_qk_at_full_rank_is_identity(family):
    m = tiny_model(family)
    ids = _ids()
    ref = _out(m, ids)
    for p in attention_parts(analyse(m)).values():
        for w in p.qk_weights:
            out_f, in_f = m.get_parameter(w).shape
            factorise(m, w.rsplit(".", 1)[0], min(in_f, out_f), torch.rand(in_f) + 0.1)
    torch.testing.assert_close(_out(m, ids), ref, atol=1e-5, rtol=1e-5)


def test_saving_rank_only_where_it_saves():
    assert saving_rank(576, 576, 0.4) == 172 and 172 * 1152 <= 0.6 * 576 * 576
    assert saving_rank(64, 8, 0.1) == 6 and saving_rank(64, 64, 0.0) is None  # rank 32 saves nothing
    assert ratios(0.2) == (0.4, 0.1) and ratios(0.5) == pytest.approx((0.75, 0.25))


def _pruned_ffn_residual(m, ids, keep):
    """Inputs X of layer 0's MLP and the residual E = dense(X) - pruned(X) after dropping channels."""
    mlp = m.model.layers[0].mlp
    xs = []
    h = mlp.register_forward_pre_hook(lambda mod, a: xs.append(a[0].detach()))
    _out(m, ids)
    h.remove()
    X = xs[0].reshape(-1, xs[0].shape[-1])
    pruned = copy.deepcopy(mlp)
    with torch.no_grad():
        pruned.down_proj.weight[:, ~keep] = 0
        E = mlp(X) - pruned(X)
    return X, E


@pytest.mark.parametrize("rank,alpha", [(1, 0.05), (8, 0.05), (64, 1e-4), (8, 5.0)])
def test_linear_calibration_never_increases_ffn_error(rank, alpha):
    m = tiny_model("llama")
    X, E = _pruned_ffn_residual(m, _ids(8, 16), torch.arange(96) % 3 != 0)
    acc = lincal.ResidualFit(X.shape[1])
    acc.add(X, E)
    c = lincal.fit(acc, rank, alpha)
    measured = float(((E.double() - X.double() @ c.down.T @ c.up.T) ** 2).sum())
    assert measured == pytest.approx(c.error_after, rel=1e-6, abs=1e-9)
    assert measured <= float((E.double() ** 2).sum()) * (1 + 1e-9)
    if rank == 64:  # full rank, tiny ridge: a real reduction
        assert measured < 0.9 * float((E.double() ** 2).sum())


def _olica(family="llama", **kw):
    m = tiny_model(family, num_hidden_layers=3)
    base = dict(criterion="olica", reconstruction="none", attention="olica", target=0.2, calib_samples=16,
                calib_seq_len=24, batch_size=8, lincal_layers=2, lincal_rank_ratio=0.1)
    base.update(kw)
    dense = copy.deepcopy(m)
    out = prune_model(m, load_recipe(base), _ids(16, 24, seed=1))
    return dense, m, out


def test_olica_split_is_exact_and_modules_are_in_place():
    dense, m, out = _olica(scope="all", lincal_layers=0)
    alloc = find_pass(out.report, "olica_split")
    assert count_params(dense) - count_params(m) == alloc["removed_params"]
    assert abs(alloc["achieved"] - 0.2) < 0.03
    attn = m.model.layers[1].self_attn
    assert type(attn.q_proj).__name__ == "LowRankLinear" and type(attn.v_proj).__name__ == "PaddedOutLinear"
    assert attn.v_proj.out_features == 2 * alloc["v_kept"][0] < 2 * 16


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_olica_model_generates_saves_reloads_and_recaptures(family, tmp_path):
    from transformers import AutoModelForCausalLM
    _, m, out = _olica(family)
    ins = find_pass(out.report, "insert_linear_calibration")["inserted"]
    assert len(ins) == 2 and all(i["residual_error_ratio"] <= 1.0 for i in ins)
    ids = _ids(2, 10, seed=3)
    g1 = m.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    g2 = m.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(g1, g2)
    save_pruned(m, tmp_path / "o")
    for again in (load_pruned(tmp_path / "o"),
                  AutoModelForCausalLM.from_pretrained(tmp_path / "o", trust_remote_code=True).eval()):
        torch.testing.assert_close(_out(again, ids), _out(m, ids), atol=0, rtol=0)
    a = analyse(load_pruned(tmp_path / "o"))  # re-capture of the reloaded model
    kinds = {g.kind for g in a.groups}
    assert "low_rank" in kinds and "ffn_channels" in kinds


def test_olica_on_opt_without_linear_calibration():
    dense, m, out = _olica("opt", lincal_layers=0)
    ids = _ids(2, 10)
    assert not torch.allclose(_out(m, ids), _out(dense, ids))
    assert count_params(m) < count_params(dense)


def test_linear_calibration_refuses_ffn_living_in_the_block():
    with pytest.raises(FxPruneError, match="RecipeError: linear calibration: .* model.decoder.layers.0 "):
        _olica("opt", lincal_layers=1)


def test_linear_calibration_composes_with_flap_and_liar():
    dense, m, out = _olica(criterion="flap", reconstruction="liar", attention="heads", lincal_layers=1)
    ins = find_pass(out.report, "insert_linear_calibration")["inserted"]
    assert len(ins) == 1 and hasattr(m.get_submodule(ins[0]["module"]), "lincal")
    assert count_params(m) < count_params(dense)


def test_olica_rejects_pooled_allocation():
    with pytest.raises(RecipeError, match="allocation"):
        StructuredStep(attention="olica", allocation="pooled")


@pytest.mark.parametrize("attention", ["olica", "heads"])
def test_cli_dry_run_prints_the_plan_and_sizes(attention, tmp_path, capsys):
    import json

    import yaml

    from fxprune.cli import main
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"word{i % 97} and more text" for i in range(3000)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": "structured", "criterion": "olica" if attention == "olica" else "flap",
                                      "reconstruction": "none", "attention": attention, "target": 0.2,
                                      "calib_samples": 4, "calib_seq_len": 16}))
    assert main(["prune", "tiny:llama", "--recipe", str(recipe), "--calib", str(text), "--dry-run", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    before, after = rep["steps"][0]["params"]
    assert after < before
    kinds = {p["kind"] for p in rep["steps"][0]["plan"].values()}
    assert ("low_rank" in kinds and "attn_v_channels" in kinds) == (attention == "olica")


def test_whitened_low_rank_has_lower_output_error_than_diagonal():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 24)
    X = torch.randn(512, 32) @ torch.randn(32, 32)  # correlated inputs
    errs = {}
    for mode in ("diag", "whitened"):
        holder = torch.nn.Module()
        holder.p = copy.deepcopy(lin)
        factorise(holder, "p", 8, X.pow(2).mean(0), gram=(X.T @ X / len(X)) if mode == "whitened" else None,
                  damping=1e-6)
        with torch.no_grad():
            errs[mode] = float((holder.p(X) - lin(X)).pow(2).sum())
    assert errs["whitened"] < errs["diag"]
    holder = torch.nn.Module()
    holder.p = copy.deepcopy(lin)
    factorise(holder, "p", 24, gram=X.T @ X / len(X), damping=1e-6)  # full rank: exact
    with torch.no_grad():
        torch.testing.assert_close(holder.p(X), lin(X), atol=1e-4, rtol=1e-4)
