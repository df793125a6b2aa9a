"""A whole prune across two CPU processes (gloo, Lightning Fabric ddp_spawn; issue 15 item 3): every
rank streams its shard of the calibration windows, the statistics (and GOA's refit sums) are
all-reduced before any solve, so both ranks compute the same model, and it equals the one-process
model up to the order of float summation (same kept units, weights within float rounding)."""
import os

import pytest
import torch

import fxprune
from fxprune.calibration.engine import Engine, EngineConfig
from fxprune.models.tiny import tiny_model

RECIPES = ("goa-liar-ffn-global-20", "sparsegpt-2of4")


def _windows():
    return torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(5))


def _prune(engine):
    torch.set_num_threads(1)
    out = {}
    for name in RECIPES:
        torch.manual_seed(0)
        model = tiny_model("llama")
        res = fxprune.prune(model, fxprune.load_recipe(name).with_calibration(batch_size=2), _windows(), engine)
        out[name] = {"plan": res.plan, "state": {k: v.clone() for k, v in model.state_dict().items()},
                     "params": res.report["params_after"]}
    return out


def _worker(fabric, out_dir):
    res = _prune(Engine(EngineConfig(devices=2, strategy="ddp_spawn"), fabric=fabric))
    torch.save(res, os.path.join(out_dir, f"rank{fabric.global_rank}.pt"))


@pytest.mark.slow
def test_two_process_prune_equals_one_process(tmp_path):
    single = _prune(Engine(EngineConfig(devices=1)))
    engine = Engine(EngineConfig(accelerator="cpu", devices=2, strategy="ddp_spawn"))
    engine.launch(_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for name in RECIPES:
        assert r0[name]["plan"] == r1[name]["plan"] == single[name]["plan"]
        assert r0[name]["params"] == single[name]["params"]
        s0, s1, s = r0[name]["state"], r1[name]["state"], single[name]["state"]
        assert s0.keys() == s.keys()
        for k in s:
            assert torch.equal(s0[k], s1[k]), k  # both ranks solved the same reduced sums: the same bits
            torch.testing.assert_close(s0[k], s[k], rtol=1e-4, atol=1e-5)
            if name.startswith("sparsegpt"):
                assert torch.equal(s0[k] == 0, s[k] == 0), k  # the same 2:4 masks
