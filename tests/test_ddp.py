"""Two CPU processes (gloo, Lightning Fabric ddp_spawn): reduced statistics and perplexity equal a
single-process run."""
import os

import pytest
import torch

from fxprune.calibration.engine import Engine, EngineConfig
from fxprune.calibration.observers import HeadLayout, Stat, StatsRequest
from fxprune.models.tiny import tiny_model

NAMES = ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def _request():
    stats = {Stat.INPUT_GRAM, Stat.INPUT_SUM, Stat.INPUT_SQ, Stat.OUTPUT_SQ}
    return StatsRequest({NAMES[0]: stats | {Stat.HEAD_GRAM}, NAMES[1]: stats, NAMES[2]: stats},
                        heads={NAMES[0]: HeadLayout(4, 16)}, exclude_first_token=True)


def _windows():
    return torch.randint(0, 128, (10, 16), generator=torch.Generator().manual_seed(3))


def _run(engine):
    torch.set_num_threads(1)
    model = engine.prepare(tiny_model("llama"))
    w = _windows()
    lw = engine.calibrate(model, w, _request(), batch_size=2, layerwise=True)
    whole = engine.calibrate(model, w, _request(), batch_size=2, layerwise=False)
    ppl = engine.perplexity(model, w, batch_size=3)
    return {"layerwise": {n: lw[n] for n in NAMES}, "whole": {n: whole[n] for n in NAMES},
            "ppl": (ppl.nll, ppl.tokens), "rank_batches": len(engine.batches(w, 2)), "world": engine.world_size}


def _worker(fabric, out_dir):
    res = _run(Engine(EngineConfig(devices=2, strategy="ddp_spawn"), fabric=fabric))
    torch.save(res, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


@pytest.mark.slow
def test_two_process_stats_equal_single_process(tmp_path):
    single = _run(Engine(EngineConfig(devices=1)))
    assert single["world"] == 1 and single["rank_batches"] == 5
    engine = Engine(EngineConfig(accelerator="cpu", devices=2, strategy="ddp_spawn"))
    engine.launch(_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["rank_batches"] for r in ranks] == [3, 2]  # 5 batches sharded 3 + 2
    for r in ranks:
        for mode in ("layerwise", "whole"):
            for n in NAMES:
                a, b = r[mode][n], single[mode][n]
                assert a.count == b.count == 10 * 15
                for field in ("gram", "input_sum", "input_sq", "output_sq"):
                    torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(r[mode][NAMES[0]].head_gram, single[mode][NAMES[0]].head_gram,
                                       rtol=1e-10, atol=1e-10)
        assert r["ppl"][1] == single["ppl"][1] == 10 * 15
        assert abs(r["ppl"][0] - single["ppl"][0]) < 1e-9 * abs(single["ppl"][0])
