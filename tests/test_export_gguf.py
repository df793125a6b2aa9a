"""GGUF export: the file llama.cpp runs computes what the PyTorch model computes.

Tiny LLaMA/Qwen2 models (GQA), pruned with uniform and per-layer random plans, with the biases LIAR
adds, with Olica's modules and a linear calibration: exported at f32, llama.cpp's logits equal the
PyTorch logits to relative 1e-4 and greedy generation is identical. Sparse weights keep their zeros
in every type; unsupported families and modules are refused with typed errors naming them.
"""
import numpy as np
import pytest
import torch
from torch import nn

from fxprune.analysis.analyser import analyse
from fxprune.errors import ExportError, OutputError, UnsupportedFamilyError, UnsupportedModuleError
from fxprune.export import deploy_channel_multiple, export_gguf, head_multiple, row_multiple
from fxprune.export.gguf_writer import interleave_rope
from fxprune.models.tiny import tiny_model
from fxprune.surgery import prune

gguf = pytest.importorskip("gguf")


def random_plan(analysis, seed, uniform):
    """Random kept units per group; ``uniform``: the same count in every layer (random indices)."""
    g = torch.Generator().manual_seed(seed)
    plan, counts = {}, {}
    for gr in analysis.prunable():
        if uniform:
            k = counts.setdefault(gr.kind, int(torch.randint(1, gr.units + 1, (1,), generator=g)))
        else:
            k = int(torch.randint(1, gr.units + 1, (1,), generator=g))
        plan[gr.id] = sorted(torch.randperm(gr.units, generator=g)[:k].tolist())
    return plan


def add_biases(model, seed=0, kinds=("o_proj", "down_proj")):
    """Give ``o_proj``/``down_proj`` a bias, as LIAR does (random values)."""
    g = torch.Generator().manual_seed(seed)
    for name, mod in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in kinds and mod.bias is None:
            mod.bias = nn.Parameter(0.1 * torch.randn(mod.out_features, generator=g))


def pruned_tiny(family, plan_kind, biases, seed=0, layers=3):
    over = {"num_attention_heads": 4} if family == "qwen2" else {}  # 4 x 16 = hidden: the stock qwen2 graph
    # initializer_range 0.1: logits spread enough that greedy generation varies (0.02 repeats one token)
    m = tiny_model(family, seed=seed, num_hidden_layers=layers, initializer_range=0.1, **over)
    if plan_kind != "dense":
        a = analyse(m)
        prune(m, random_plan(a, seed, plan_kind == "uniform"), a)
    if biases:
        add_biases(m, seed)
    return m


def test_row_multiples_and_deploy_rounding():
    assert row_multiple("f32") == row_multiple("f16") == 1
    assert row_multiple("q8_0") == row_multiple("q4_0") == 32
    assert row_multiple("q4_k_m") == 256
    assert deploy_channel_multiple("q4_0", 8) == 32 and deploy_channel_multiple("q4_k_m", 8) == 256
    assert deploy_channel_multiple("f16", 8) == 8
    assert head_multiple("q4_0", 64) == 1 and head_multiple("q4_0", 16) == 2
    with pytest.raises(ExportError, match="q3_x"):
        row_multiple("q3_x")


def test_interleave_rope_is_the_pair_permutation():
    hd, heads = 8, 2
    w = torch.arange(heads * hd).float()[:, None]
    out = interleave_rope(w, heads, hd)[:, 0].long().tolist()
    # per head: [0, 4, 1, 5, 2, 6, 3, 7] (i pairs with i + hd/2 -> 2i, 2i+1)
    assert out == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


@pytest.mark.parametrize("family", ["gpt2", "opt", "bert", "mamba"])
def test_other_families_refused_naming_the_family(family, tmp_path):
    m = tiny_model(family)
    with pytest.raises(UnsupportedFamilyError) as e:
        export_gguf(m, tmp_path / "m.gguf")
    assert e.value.family == family and family in str(e.value)
    assert not (tmp_path / "m.gguf").exists()


def test_unknown_module_refused_naming_it(tmp_path):
    m = tiny_model("llama")

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    old = m.model.layers[1].mlp.up_proj
    new = Scaled(old.in_features, old.out_features, bias=False)
    m.model.layers[1].mlp.up_proj = new
    with pytest.raises(UnsupportedModuleError) as e:
        export_gguf(m, tmp_path / "m.gguf")
    assert e.value.module == "model.layers.1.mlp.up_proj"
    m.model.layers[1].mlp.up_proj = old
    m.model.layers[0].mlp.extra = nn.Linear(4, 4)  # parameters nothing reads into GGUF
    with pytest.raises(UnsupportedModuleError, match=r"model\.layers\.0\.mlp\.extra"):
        export_gguf(m, tmp_path / "m.gguf")


def test_refuses_to_overwrite_a_foreign_file(tmp_path):
    p = tmp_path / "m.gguf"
    p.write_text("not ours")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not written by fxprune"):
            export_gguf(tiny_model("llama"), p, overwrite=overwrite)
    assert p.read_text() == "not ours"
    q = tmp_path / "ours.gguf"
    export_gguf(tiny_model("llama"), q, log=lambda s: None)
    with pytest.raises(OutputError, match="--overwrite"):
        export_gguf(tiny_model("llama", seed=1), q, log=lambda s: None)
    export_gguf(tiny_model("llama", seed=1), q, overwrite=True, log=lambda s: None)  # ours: replaced
    assert not list(tmp_path.glob(".*tmp*"))


def _dequant(t):
    from gguf import quants
    a = np.asarray(t.data)
    if t.tensor_type.name in ("F32", "F16"):
        return a.astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
    return quants.dequantize(a, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_0"])
def test_sparse_export_keeps_its_zeros(dtype, tmp_path):
    m = tiny_model("llama", num_hidden_layers=2, hidden_size=64, intermediate_size=128)
    g = torch.Generator().manual_seed(0)
    masks = {}
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, nn.Linear) and ".layers." in name:
                w = mod.weight
                if "mlp" in name:  # 2:4 by magnitude
                    grp = w.abs().reshape(w.shape[0], -1, 4)
                    keep = torch.zeros_like(grp, dtype=torch.bool).scatter_(-1, grp.topk(2, -1).indices, True)
                    keep = keep.reshape(w.shape)
                else:  # 50% unstructured, random
                    keep = torch.rand(w.shape, generator=g) > 0.5
                w.mul_(keep)
                masks[name] = ~keep
    p = tmp_path / f"s.{dtype}.gguf"
    export_gguf(m, p, dtype, log=lambda s: None)
    r = gguf.GGUFReader(str(p))
    by_name = {t.name: t for t in r.tensors}
    hd, a = 16, m.model.layers[0].self_attn
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for name, zero in masks.items():
        i = int(name.split(".")[2])
        short = name.rsplit(".", 1)[-1]
        z = zero.float()
        if short == "q_proj":
            z = interleave_rope(z, a.q_proj.out_features // hd, hd)
        if short == "k_proj":
            z = interleave_rope(z, a.k_proj.out_features // hd, hd)
        got = _dequant(by_name[f"blk.{i}.{names[short]}.weight"]) == 0
        assert (got[z.bool().numpy()]).all(), name          # every pruned weight is exactly zero
        if dtype != "q4_0":  # 4 bits round small kept weights to zero too: only the inclusion holds there
            assert got.sum() <= z.sum() * 1.01 + 2, name


# ------------------------------------------------------------------------------------------ llama.cpp
def _llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama.cpp tests need the llamacpp extra")


def _compare(model, path, n_tokens=40, new_tokens=12, seed=1):
    from fxprune.export.llamacpp import LlamaCppModel
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (n_tokens,), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(input_ids=ids[None]).logits[0].numpy()
        gen = model.generate(ids[None, :8], max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                             eos_token_id=None, pad_token_id=0)[0, 8:].tolist()
    with LlamaCppModel(path, n_ctx=64, threads=1) as lm:
        got = lm.sequence_logits(ids.tolist())
        gen_cpp = lm.greedy(ids[:8].tolist(), new_tokens)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    return rel, gen, gen_cpp


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("plan_kind,biases", [("dense", False), ("uniform", False), ("uniform", True),
                                              ("per_layer", False), ("per_layer", True)])
def test_llamacpp_logits_and_generation_match(family, plan_kind, biases, tmp_path):
    _llama_cpp()
    m = pruned_tiny(family, plan_kind, biases, seed=3)
    rep = export_gguf(m, tmp_path / "m.gguf", "f32", log=lambda s: None)
    widths = set(map(tuple, rep.widths))
    if len(widths) > 1:
        assert rep.arch == "deci"
    elif family == "llama":
        assert rep.arch == "llama"
    else:  # qwen2's architecture: heads * head_dim == hidden and no output/FFN biases
        stock = not biases and rep.widths[0][0] * 16 == 64
        assert rep.arch == ("qwen2" if stock else "deci")
    rel, gen, gen_cpp = _compare(m, tmp_path / "m.gguf")
    assert rel < 1e-4, (rep.arch, rep.widths, rel)
    assert gen == gen_cpp


def test_llamacpp_matches_after_liar_pipeline_per_layer(tmp_path):
    _llama_cpp()
    import fxprune
    m = tiny_model("llama", seed=5, num_hidden_layers=3, initializer_range=0.1)
    w = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    fxprune.prune(m, {"calibration": {"batch_size": 4}, "steps": [{"structured": {
        "criterion": "flap", "reconstruction": "liar", "allocation": "global", "target": 0.35,
        "channel_multiple": 1}}]}, w)
    assert m.model.layers[0].mlp.down_proj.bias is not None  # LIAR added it
    rep = export_gguf(m, tmp_path / "m.gguf", "f32", log=lambda s: None)
    rel, gen, gen_cpp = _compare(m, tmp_path / "m.gguf")
    assert rel < 1e-4 and gen == gen_cpp, (rep.arch, rep.widths, rel)


def test_llamacpp_matches_olica_modules_and_linear_calibration_folded(tmp_path):
    _llama_cpp()
    import fxprune
    from fxprune.structure import LowRankLinear, PaddedOutLinear
    m = tiny_model("llama", seed=6, num_hidden_layers=3, initializer_range=0.1)
    w = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(1))
    fxprune.prune(m, {"calibration": {"batch_size": 4}, "steps": [{"structured": {
        "criterion": "olica", "reconstruction": "none", "attention": "olica", "target": 0.3, "scope": "all",
        "lincal_layers": 2, "lincal_rank_ratio": 0.1, "channel_multiple": 1}}]}, w)
    mods = list(m.modules())
    assert any(isinstance(x, LowRankLinear) for x in mods) and any(isinstance(x, PaddedOutLinear) for x in mods)
    assert any(getattr(x, "lincal", None) is not None for x in mods)
    notes = []
    rep = export_gguf(m, tmp_path / "m.gguf", "f32", log=notes.append)
    assert any("low-rank" in n for n in notes) and any("linear calibration" in n for n in notes)
    assert any("zero rows" in n for n in notes)
    rel, gen, gen_cpp = _compare(m, tmp_path / "m.gguf")
    assert rel < 1e-4 and gen == gen_cpp, (rep.arch, rep.widths, rel)


@pytest.mark.parametrize("dtype", ["f16", "q8_0", "q4_0"])
def test_llamacpp_runs_quantised_per_layer_files(dtype, tmp_path):
    """Quantised per-layer files load and track the PyTorch logits (centred cosine similarity; llama.cpp
    also quantises activations to 8 bits for q8_0/q4_0 matmuls, so no exact comparison exists)."""
    _llama_cpp()
    from fxprune.export.llamacpp import LlamaCppModel
    m = pruned_tiny("llama", "per_layer", True, seed=4)
    rep = export_gguf(m, tmp_path / "m.gguf", dtype, log=lambda s: None)
    if dtype != "f16":  # FFN widths padded to 32 with zero channels (exact), never silently another type
        assert all(w[2] % 32 == 0 for w in rep.widths)
        assert rep.tensor_types.get(dtype.upper(), 0) > 0
    ids = torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(input_ids=ids[None]).logits[0].numpy()
    with LlamaCppModel(tmp_path / "m.gguf", n_ctx=64) as lm:
        got = lm.sequence_logits(ids.tolist())
    a, b = (got - got.mean(-1, keepdims=True)).ravel(), (ref - ref.mean(-1, keepdims=True)).ravel()
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > {"f16": 0.99999, "q8_0": 0.999, "q4_0": 0.95}[dtype], cos


def test_prune_deploy_dtype_rounds_ffn_widths_and_dry_run_says_so(tmp_path, capsys):
    import json

    import yaml

    from fxprune.cli import main
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"word{i % 97} and more text" for i in range(3000)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"calibration": {"samples": 4, "seq_len": 16}, "steps": [{"structured": {
        "criterion": "flap", "reconstruction": "none", "allocation": "global", "target": 0.3, "kinds": ["ffn"],
        "channel_multiple": 1}}]}))
    args = ["prune", "tiny:llama", "--recipe", str(recipe), "--calib", str(text), "--dry-run"]

    def ffn_kept(rep):
        return [p["kept"] for p in rep["steps"][0]["plan"].values() if p["kind"] == "ffn_channels"]

    assert main(args + ["--json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert main(args + ["--json", "--deploy-dtype", "q4_0"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["deploy"] == {"dtype": "q4_0", "channel_multiple": 32}
    assert ffn_kept(rep) and all(k % 32 == 0 for k in ffn_kept(rep))
    assert any(k % 32 for k in ffn_kept(free))
    assert main(args + ["--deploy-dtype", "q4_0"]) == 0
    assert "multiples of 32 for GGUF q4_0" in capsys.readouterr().out
    assert main(args + ["--deploy-dtype", "q3_x"]) == 2  # unknown type: a typed error naming it
    assert "q3_x" in capsys.readouterr().err


def test_cli_export_writes_and_reports(tmp_path, capsys):
    from fxprune.cli import main
    out = tmp_path / "t.gguf"
    assert main(["export", "tiny:qwen2", "--to", "gguf", "--out", str(out), "--dtype", "q8_0"]) == 0
    text = capsys.readouterr().out
    # tiny qwen2: 6 heads of 10 channels (60 != hidden 64): not the stock qwen2 graph; 60 is no multiple of 32
    assert "architecture deci" in text and out.is_file()
    assert "attn_output.weight: row length 60 is not a multiple of 32: stored as f16" in text
    assert gguf.GGUFReader(str(out)).fields["fxprune.source"].contents() == "tiny:qwen2"
    assert main(["export", "tiny:gpt2", "--out", str(tmp_path / "g.gguf")]) == 2
    assert "gpt2" in capsys.readouterr().err


def test_stock_llama_architecture_refuses_per_layer_widths(tmp_path, monkeypatch):
    """The fact the deci choice rests on (llama.cpp 0.3.36's src/models/llama.cpp builds every layer
    with layer 0's widths): the same per-layer file labelled ``llama`` does not load."""
    _llama_cpp()
    from fxprune.errors import EngineError
    from fxprune.export import gguf_writer
    from fxprune.export.llamacpp import LlamaCppModel
    m = pruned_tiny("llama", "per_layer", False, seed=3)
    monkeypatch.setattr(gguf_writer, "choose_arch", lambda dec: "llama")
    rep = export_gguf(m, tmp_path / "m.gguf", "f32", log=lambda s: None)
    assert rep.arch == "llama" and len(set(map(tuple, rep.widths))) > 1
    with pytest.raises(EngineError, match="could not load"):
        LlamaCppModel(tmp_path / "m.gguf", n_ctx=32)
