"""Layer-wise calibration equals a whole-model pass; the pruned stream sees modified blocks."""
import copy

import pytest
import torch

from fxprune.calibration.blocks import block_output, find_blocks
from fxprune.calibration.layerwise import Stream, calibrate_layerwise, calibrate_whole
from fxprune.calibration.observers import Stat, StatsRequest
from fxprune.errors import AnalysisError
from fxprune.models.tiny import tiny_model

FAMILIES = {"llama": "model.layers", "qwen2": "model.layers", "mistral": "model.layers", "gpt2": "transformer.h",
            "opt": "model.decoder.layers", "bert": "bert.encoder.layer", "mamba": "backbone.layers"}


def _linear_names(model, prefix):
    # Mamba's dt_proj weight is read inside the selective scan: the module is never called.
    return [n for n, m in model.named_modules()
            if type(m).__name__ in ("Linear", "Conv1D") and n.startswith(prefix + ".") and not n.endswith("dt_proj")]


def _batches(padded):
    g = torch.Generator().manual_seed(1)
    out = [{"input_ids": torch.randint(0, 128, (2, 10), generator=g)} for _ in range(2)]
    if padded:
        m = torch.ones(2, 10, dtype=torch.long)
        m[1, 7:] = 0
        out[1]["attention_mask"] = m
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layerwise_equals_whole_model(family):
    model = tiny_model(family)
    blocks = find_blocks(model)
    assert blocks.name == FAMILIES[family] and len(blocks) == 2
    names = _linear_names(model, blocks.name)
    req = StatsRequest.for_modules(names, [Stat.INPUT_GRAM, Stat.INPUT_SUM, Stat.OUTPUT_SQ])
    batches = _batches(padded=family != "mamba")
    whole = calibrate_whole(model, batches, req, progress=False)
    lw = calibrate_layerwise(model, batches, req, progress=False)
    assert set(lw) == set(names)
    for n in names:
        assert lw[n].count == whole[n].count > 0
        torch.testing.assert_close(lw[n].gram, whole[n].gram, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(lw[n].output_sq, whole[n].output_sq, rtol=1e-6, atol=1e-8)


def _zero_block0_mlp(i, block, stats, ctx):
    if i == 0:
        block.mlp.down_proj.weight.data.mul_(0.5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pruned_stream_sees_modified_blocks_and_dense_targets(family):
    model = tiny_model(family)
    pruned_ref = copy.deepcopy(model)
    pruned_ref.model.layers[0].mlp.down_proj.weight.data.mul_(0.5)
    names = _linear_names(model, "model.layers")
    req = StatsRequest.for_modules(names, [Stat.INPUT_GRAM])
    batches = _batches(padded=True)
    dense = calibrate_whole(copy.deepcopy(model), batches, req, progress=False)
    pruned = calibrate_whole(pruned_ref, batches, req, progress=False)
    q = "model.layers.1.self_attn.q_proj"
    assert not torch.allclose(dense[q].gram, pruned[q].gram)

    seen = {}

    def on_block(i, block, stats, ctx):
        if i == 1:
            # dense targets: the dense model's block-1 outputs on dense inputs
            ref = copy.deepcopy(model.model.layers[1])
            seen["targets"] = [torch.allclose(t, block_output(ref(*d.args, **d.kwargs)), atol=1e-6)
                               for t, d in zip(ctx.dense_targets, ctx.dense_inputs)]
        _zero_block0_mlp(i, block, stats, ctx)

    m_dense = copy.deepcopy(model)
    m_dense_copy = copy.deepcopy(model)
    lw_dense = calibrate_layerwise(m_dense, batches, req, on_block=_zero_block0_mlp, progress=False)
    lw_pruned = calibrate_layerwise(m_dense_copy, batches, req, on_block=on_block, stream=Stream.PRUNED,
                                    progress=False)
    torch.testing.assert_close(lw_dense[q].gram, dense[q].gram)
    torch.testing.assert_close(lw_pruned[q].gram, pruned[q].gram)
    assert seen["targets"] == [True, True]
    # The dense targets are the unmodified model's: model is the untouched original here.


def test_callback_gets_reduced_stats_before_solve():
    model = tiny_model("llama")
    names = _linear_names(model, "model.layers")
    req = StatsRequest.for_modules(names, [Stat.INPUT_SUM])
    calls = []
    stats = calibrate_layerwise(model, _batches(False), req, reduce=lambda t: 3 * t,
                                on_block=lambda i, b, s, c: calls.append((i, s[f"model.layers.{i}.mlp.up_proj"].count)),
                                progress=False)
    assert calls == [(0, 3 * 40), (1, 3 * 40)]  # 2 batches x 2 x 10 tokens, "summed" over 3 ranks
    assert stats["model.layers.0.mlp.up_proj"].count == 120


def test_modules_outside_blocks_are_refused():
    model = tiny_model("llama")
    with pytest.raises(AnalysisError, match="lm_head"):
        calibrate_layerwise(model, _batches(False), StatsRequest.for_modules(["lm_head"], [Stat.INPUT_SUM]),
                            progress=False)


def test_find_blocks_without_modulelist():
    with pytest.raises(AnalysisError):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
