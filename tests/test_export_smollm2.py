"""SmolLM2-135M, pruned to per-layer FFN widths with LIAR-style biases, exported as f32 GGUF: llama.cpp's
perplexity on WikiText-2 windows equals fxprune's PyTorch perplexity (relative 1e-3; in practice
~1e-6), its tokenizer cuts text like the PyTorch tokenizer, and the chat template carries over."""
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("llama_cpp", reason="needs the llamacpp extra")
    from fxprune.errors import ModelLoadError
    from fxprune.loading import load_model
    try:
        return load_model("smollm2")
    except ModelLoadError as e:
        pytest.skip(str(e))


def test_pruned_smollm2_perplexity_in_llamacpp_equals_pytorch(smol, root, tmp_path):
    import gguf

    from fxprune.analysis.analyser import analyse
    from fxprune.calibration.engine import Engine
    from fxprune.data import evaluation_windows
    from fxprune.export import export_gguf
    from fxprune.export.llamacpp import LlamaCppModel
    from fxprune.loading import smollm2_path
    from fxprune.surgery import prune
    model, tok = smol.model, smol.tokenizer
    a = analyse(model)
    g = torch.Generator().manual_seed(0)
    plan = {}
    for gr in a.prunable():  # a cheap per-layer plan: random FFN widths (25%..100%), attention whole
        if gr.kind == "ffn_channels":
            k = int(torch.randint(gr.units // 4, gr.units + 1, (1,), generator=g))
            plan[gr.id] = sorted(torch.randperm(gr.units, generator=g)[:k].tolist())
    prune(model, plan, a)
    with torch.no_grad():  # the biases LIAR adds (o_proj, down_proj have none in LLaMA)
        for layer in model.model.layers:
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.bias = nn.Parameter(0.01 * torch.randn(lin.out_features, generator=g))
    path = tmp_path / "smol-pruned.f32.gguf"
    rep = export_gguf(model, path, "f32", vocab_from=smollm2_path(), log=lambda s: None)
    assert rep.arch == "deci" and len({w[2] for w in rep.widths}) > 1

    w = evaluation_windows(tok, "wikitext2", seq_len=128, max_windows=4)
    ref = Engine().perplexity(model, w.ids)
    with LlamaCppModel(path, n_ctx=128, threads=2) as lm:
        got = lm.perplexity(w.ids)
        text = "The pruned model's tokenizer: café, 1234, <|im_start|>user\nHi<|im_end|>"
        assert lm.tokenize(text, add_special=False) == tok(text, add_special_tokens=False)["input_ids"]
    assert got.tokens == ref.tokens == 4 * 127
    assert abs(got.ppl - ref.ppl) / ref.ppl < 1e-3, (got.ppl, ref.ppl)
    fields = gguf.GGUFReader(str(path)).fields
    src = gguf.GGUFReader(str(smollm2_path())).fields
    assert fields["tokenizer.chat_template"].contents() == src["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"


def test_readme_recipe_checkpoint_runs_in_llamacpp(smol, root, tmp_path):
    """The README's main job (``goa-liar-block-ffn-measured-20-c512``: GOA scores, LIAR reconstruction with its
    biases and the block refit of each down_proj, per-layer FFN widths from measured KL costs) with its
    calibration cut to 8 x 64 tokens for time, saved,
    exported from the checkpoint directory as the README's export command does, and run in llama.cpp:
    the same perplexity as the reloaded PyTorch checkpoint (relative 1e-3) and the same greedy tokens."""
    from fxprune.calibration.engine import Engine
    from fxprune.checkpoint import load_pruned
    from fxprune.data import evaluation_windows
    from fxprune.export import export_model
    from fxprune.export.llamacpp import LlamaCppModel
    from fxprune.loading import load_model
    from fxprune.recipe import load_recipe
    import fxprune
    loaded = load_model("smollm2")
    model, tok = loaded.model, loaded.tokenizer
    recipe = load_recipe("goa-liar-block-ffn-measured-20-c512").to_dict()
    recipe["calibration"].update(samples=8, seq_len=64)
    res = fxprune.prune(model, recipe, tokenizer=tok, data_root=str(root), source="smollm2")
    ckpt = tmp_path / "ckpt"
    fxprune.save(model, ckpt, tok)
    widths = {layer.mlp.down_proj.in_features for layer in model.model.layers}
    assert len(widths) > 1, "measured allocation should give per-layer FFN widths"
    assert any(layer.mlp.down_proj.bias is not None for layer in model.model.layers), "LIAR adds biases"
    from fxprune.report import find_pass
    assert find_pass(res.report, "reconstruct_blocks")["block_refit"] > 0, "the block refit ran"
    path = tmp_path / "readme.f32.gguf"
    rep = export_model(str(ckpt), path, "f32", log=lambda s: None)
    assert rep.arch == "deci"
    reloaded = load_pruned(ckpt).eval()
    w = evaluation_windows(tok, "wikitext2", seq_len=128, max_windows=4, root=str(root))
    ref = Engine().perplexity(reloaded, w.ids)
    prompt = w.ids[0, :12].tolist()
    with torch.no_grad():
        ids = torch.tensor([prompt])
        for _ in range(8):
            ids = torch.cat([ids, reloaded(ids).logits[:, -1:].argmax(-1)], 1)
    with LlamaCppModel(path, n_ctx=128, threads=2) as lm:
        got = lm.perplexity(w.ids)
        assert lm.greedy(prompt, 8) == ids[0, 12:].tolist()
    assert abs(got.ppl - ref.ppl) / ref.ppl < 1e-3, (got.ppl, ref.ppl)
