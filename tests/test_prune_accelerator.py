"""``fxprune prune --accelerator/--precision``: the prune runs on the engine's device (CUDA measured in
``bench/results/gpu_check.json``); here, on a machine without a GPU: the explicit CPU fp32 flags give the
default's checkpoint bit for bit, and a device this machine lacks is a typed error naming the flags."""
import pytest
import torch
import yaml

from fxprune.cli import main

RECIPE = {"calibration": {"source": "generated", "samples": 4, "seq_len": 16, "batch_size": 2},
          "steps": [{"structured": {"criterion": "goa", "reconstruction": "liar_block", "allocation": "uniform",
                                    "target": 0.3, "kinds": ["ffn"], "channel_multiple": 4}}]}


def _weights(d):
    from safetensors.torch import load_file
    return load_file(str(d / "model.safetensors"))


def test_explicit_cpu_fp32_is_the_default(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(RECIPE))
    assert main(["prune", "tiny:llama", "--recipe", str(rec), "--out", str(tmp_path / "a")]) == 0
    assert main(["prune", "tiny:llama", "--recipe", str(rec), "--out", str(tmp_path / "b"),
                 "--accelerator", "cpu", "--precision", "32-true"]) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_missing_device_is_a_typed_error(tmp_path, capsys):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(RECIPE))
    rc = main(["prune", "tiny:llama", "--recipe", str(rec), "--out", str(tmp_path / "c"), "--accelerator", "cuda"])
    assert rc != 0
    assert "--accelerator cuda" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_accelerator_refuses_onload_and_resume(tmp_path, capsys):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(RECIPE))
    rc = main(["prune", "tiny:llama", "--recipe", str(rec), "--out", str(tmp_path / "d"), "--resume",
               "--precision", "bf16-true"])
    assert rc != 0 and "--resume" in capsys.readouterr().err
