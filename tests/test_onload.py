"""Onloading (fxprune/onload.py): a checkpoint pruned one block at a time from disk gives exactly the
checkpoint the in-memory run gives, and its memory does not grow with depth."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fxprune
from fxprune.errors import CheckpointError, ModelLoadError, RecipeError
from fxprune.models.synthetic import write_synthetic
from fxprune.onload import onloaded_of, open_onloaded
from fxprune.output import tensor_digests


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(d, "tiny", seed=5, shard_bytes=120_000)  # bf16, 4 layers, several shards
    return d


def _windows(n=8, L=24, vocab=512):
    return torch.randint(3, vocab, (n, L), generator=torch.Generator().manual_seed(11))


def _recipe(name, **calib):
    from fxprune.recipe import load_recipe
    r = load_recipe(name)
    return r.with_calibration(batch_size=4, **calib) if hasattr(r, "with_calibration") else r


def _in_memory(ckpt, recipe, dtype, out):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype).eval()
    res = fxprune.prune(model, recipe, _windows())
    fxprune.save(model, out)
    return res


def _onloaded(ckpt, recipe, dtype, out):
    om = open_onloaded(ckpt, dtype=dtype, out=out)
    res = fxprune.prune(om.model, recipe, _windows())
    om.save()
    return res, om


@pytest.mark.parametrize("recipe,dtype", [("goa-liar-ffn-global-20", torch.float32),
                                          ("goa-liar-ffn-20", torch.bfloat16),
                                          ("sparsegpt-2of4", torch.bfloat16)])
def test_onloaded_run_equals_in_memory_bit_for_bit(ckpt, tmp_path, recipe, dtype):
    rec = _recipe(recipe)
    ref = _in_memory(ckpt, rec, dtype, tmp_path / "mem")
    got, om = _onloaded(ckpt, rec, dtype, tmp_path / "onl")
    a, b = tensor_digests(tmp_path / "mem"), tensor_digests(tmp_path / "onl")
    assert len(a) >= 4 * 9 + 3 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert got.report["params_after"] == ref.report["params_after"]
    if recipe.startswith("sparsegpt"):
        from fxprune.shards import TensorFiles
        w = TensorFiles.open(tmp_path / "onl").read("model.layers.3.mlp.up_proj.weight")
        assert (w.reshape(-1, 4) == 0).sum(1).min().item() >= 2  # 2:4
    else:
        assert got.report["params_after"] < ref.report["params_before"]
    assert got.plan == ref.plan
    assert om.blocks_written == 4 and om.resident_bytes == 0
    from fxprune.shards import TensorFiles
    for path in ("mem", "onl"):  # stored in the working dtype
        assert TensorFiles.open(tmp_path / path).tensors["model.layers.0.mlp.down_proj.weight"].dtype == dtype
    ids = _windows(2, 10)
    la = fxprune.load_pruned(tmp_path / "mem")(ids).logits
    lb = fxprune.load_pruned(tmp_path / "onl")(ids).logits
    assert torch.equal(la, lb)


def test_uniform_widths_load_with_stock_from_pretrained(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM
    _onloaded(ckpt, _recipe("goa-liar-ffn-20"), torch.bfloat16, tmp_path / "o")
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    idx = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) >= 5  # one file per block + the rest
    m = AutoModelForCausalLM.from_pretrained(str(tmp_path / "o"), trust_remote_code="fxprune_structure" in cfg)
    assert m.model.layers[2].mlp.up_proj.weight.shape[0] < 176


def test_peak_resident_is_one_block_plus_embeddings(ckpt, tmp_path):
    _, om = _onloaded(ckpt, _recipe("sparsegpt-2of4"), torch.float32, tmp_path / "o")
    block = sum(p.numel() for p in om.model.model.layers[0].parameters()) * 4
    embed = 512 * 64 * 4
    assert om.peak_resident_bytes <= block + embed
    assert om.peak_resident_bytes >= block


def test_failed_run_leaves_no_output(ckpt, tmp_path):
    om = open_onloaded(ckpt, out=tmp_path / "o")
    with pytest.raises(Exception):
        fxprune.prune(om.model, _recipe("sparsegpt-2of4"), torch.full((2, 4), 10 ** 6))  # ids out of range
    om.close()
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_refusals(ckpt, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(fxprune.errors.FxPruneError, match="mine"):
        open_onloaded(ckpt, out=tmp_path / "mine")
    with pytest.raises(ModelLoadError, match="config.json"):
        open_onloaded(tmp_path)
    om = open_onloaded(ckpt)
    assert onloaded_of(om.model) is om and om.model.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    with pytest.raises(CheckpointError, match="no output directory"):
        om.save()


_RSS = r"""
import resource, sys, torch
torch.set_num_threads(1)
import fxprune
from fxprune.onload import open_onloaded
om = open_onloaded(sys.argv[1], dtype=torch.float32, out=sys.argv[2])
ids = torch.randint(3, 1024, (4, 32), generator=torch.Generator().manual_seed(0))
fxprune.prune(om.model, "sparsegpt-2of4", ids)
om.save()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, om.peak_resident_bytes)
"""


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_depth(tmp_path):
    rss = {}
    for layers in (2, 8):
        d = tmp_path / f"s{layers}"
        write_synthetic(d, "small", layers=layers, seed=0)
        out = subprocess.run([sys.executable, "-c", _RSS, str(d), str(tmp_path / f"o{layers}")], check=True,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rss[layers] = [int(x) for x in out.stdout.split()[-2:]]
    per_layer_fp32 = 4 * (2 * 512 * 512 + 2 * 512 * 256 + 3 * 512 * 1536)
    assert rss[2][1] == rss[8][1]  # bytes of weights read at once: the same
    grew = rss[8][0] - rss[2][0]
    assert grew < 0.25 * 6 * per_layer_fp32, (rss, per_layer_fp32)  # in memory it would grow by 6 layers' weights


def test_cli_onload_prunes_and_saves_a_loadable_checkpoint(ckpt, tmp_path, capsys):
    from fxprune.cli import main
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(f"document {k}: " + "some words to calibrate on " * 8 for k in range(12)))
    rc = main(["prune", str(ckpt), "--onload", "--recipe", "sparsegpt-2of4", "--calib", str(calib),
               "--calib-samples", "4", "--calib-seq-len", "32", "--out", str(tmp_path / "o"), "--json"])
    assert rc == 0
    rep = json.loads((tmp_path / "o" / "fxprune_report.json").read_text())
    assert rep["onloaded"] and 0 < rep["peak_resident_weight_bytes"]
    m = fxprune.load_pruned(tmp_path / "o")
    w = m.model.layers[1].self_attn.q_proj.weight
    assert (w.reshape(-1, 4) == 0).sum(1).min().item() >= 2
    rc = main(["prune", str(ckpt), "--onload", "--recipe", "sparsegpt-2of4", "--calib", "generated",
               "--out", str(tmp_path / "o2")])
    assert rc == 2 and "generated" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_cli_onload_dry_run_prints_peak_memory_and_time_per_block(ckpt, tmp_path, capsys):
    """Issue 15 item 5: ``--onload --dry-run`` estimates from the headers and runs nothing."""
    from fxprune.cli import main
    from fxprune.onload_plan import estimate_onloaded
    from fxprune.preflight import model_facts
    for recipe, kind in (("sparsegpt-2of4", "sparsity"), ("goa-liar-ffn-global-20", "structured")):
        rc = main(["prune", str(ckpt), "--onload", "--dry-run", "--recipe", recipe, "--calib", "c4",
                   "--calib-samples", "4", "--calib-seq-len", "32", "--out", str(tmp_path / "o"), "--json"])
        assert rc == 0 and not (tmp_path / "o").exists()
        rep = json.loads(capsys.readouterr().out)
        (st,) = rep["steps"]
        assert st["blocks"] == 4 and st["seconds_per_block"] > 0 and st["peak_bytes"] > 0
        f = model_facts(str(ckpt))
        rates = {"float32": 50.0, "float64": 25.0}
        small = estimate_onloaded(f, kind, 4, 32, rates=rates)
        more = estimate_onloaded(f, kind, 64, 32, rates=rates)
        assert more.peak > small.peak and more.seconds_per_block > small.seconds_per_block
    # the 7B shape (no file needed): the estimate of a sparsegpt block stays under 4 GiB with 8 x 128
    from fxprune.models.synthetic import PRESETS
    from fxprune.preflight import ModelFacts
    c = PRESETS["7b"]
    f7 = ModelFacts("7b", 0, 0, c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"],
                    c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"]), 0, "safetensors")
    e = estimate_onloaded(f7, "sparsity", 8, 128, rates={"float32": 50.0, "float64": 25.0})
    assert 2 * 2 ** 30 < e.peak < 4 * 2 ** 30 and e.blocks == 32


def test_heap_threshold_is_fixed_on_glibc_and_the_users_setting_wins(monkeypatch):
    """``fix_heap_threshold`` (peak RSS of long onloaded runs, see its docstring) applies on glibc
    and never overrides a threshold the user chose through glibc's environment variable."""
    import platform

    from fxprune.onload import fix_heap_threshold
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_heap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert fix_heap_threshold() is True


def test_measured_allocation_is_refused_when_blocks_are_on_disk(ckpt, tmp_path):
    """The probe runs the whole model: an onloaded skeleton is refused before any block is touched."""
    from fxprune.recipe import load_recipe
    rec = load_recipe({"steps": [{"structured": {"criterion": "goa", "allocation": "measured", "target": 0.2,
                                                 "kinds": ["ffn"]}}]})
    om = open_onloaded(ckpt, dtype=torch.float32, out=tmp_path / "o")
    with pytest.raises(fxprune.errors.FxPruneError, match="measured.*every block in memory"):
        fxprune.prune(om.model, rec, _windows())
    assert om.blocks_written == 0
