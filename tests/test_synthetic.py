"""Synthetic checkpoints (fxprune/models/synthetic.py) and the tensor-by-tensor safetensors files
(fxprune/shards.py): stock readers load them, bytes depend only on the seed, shards have an index."""
import json

import pytest
import torch

from fxprune.errors import CheckpointError
from fxprune.models.synthetic import PRESETS, synthetic_config, tensor_specs, write_synthetic
from fxprune.shards import ShardWriter, TensorFiles, TensorSpec


def test_shard_writer_roundtrip_with_stock_reader(tmp_path):
    from safetensors import safe_open
    g = torch.Generator().manual_seed(0)
    ts = {"a": torch.randn(3, 5, generator=g).bfloat16(), "b": torch.arange(7, dtype=torch.int64),
          "c": torch.randn(2, 2, 2, generator=g), "d": torch.zeros(0, 4)}
    w = ShardWriter(tmp_path / "x.safetensors", [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in ts.items()])
    for k, v in ts.items():
        w.write(k, v)
    w.close()
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for k, v in ts.items():
            assert torch.equal(f.get_tensor(k), v)
    files = TensorFiles.open(tmp_path / "x.safetensors")
    for k, v in ts.items():
        assert files.read(k).dtype == v.dtype and torch.equal(files.read(k), v)


def test_shard_writer_refuses_wrong_order_and_missing(tmp_path):
    w = ShardWriter(tmp_path / "x.safetensors", [TensorSpec("a", torch.float32, (2,)), TensorSpec("b", torch.float32, (2,))])
    with pytest.raises(CheckpointError, match="expected a"):
        w.write("b", torch.zeros(2))
    w.write("a", torch.zeros(2))
    with pytest.raises(CheckpointError, match="x.safetensors: 1 declared tensors were not written"):
        w.close()


def test_synthetic_loads_with_stock_from_pretrained_sharded(tmp_path):
    from transformers import AutoModelForCausalLM
    info = write_synthetic(tmp_path / "m", "tiny", seed=3, shard_bytes=100_000)
    assert info.shards > 1 and info.layers == 4
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == info.shards
    assert index["metadata"]["total_size"] == info.bytes == 2 * info.params
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.bfloat16)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (64, 176, 4, 2)
    assert sum(p.numel() for p in model.parameters()) == info.params
    w = model.model.layers[1].mlp.up_proj.weight.float()
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.equal(model.model.norm.weight, torch.ones(64, dtype=torch.bfloat16))
    out = model(torch.arange(10)[None]).logits
    assert out.shape == (1, 10, 512) and torch.isfinite(out).all()


def test_synthetic_bytes_depend_on_seed_only(tmp_path):
    write_synthetic(tmp_path / "a", "tiny", seed=1, layers=2)
    write_synthetic(tmp_path / "b", "tiny", seed=1, layers=2, shard_bytes=50_000, chunk_elements=1000)
    write_synthetic(tmp_path / "c", "tiny", seed=2, layers=2)
    a, b, c = (TensorFiles.open(tmp_path / x) for x in "abc")
    assert a.names() and sorted(a.names()) == sorted(b.names())
    for n in a.names():
        assert torch.equal(a.read(n), b.read(n)), n
    assert not torch.equal(a.read("model.layers.0.mlp.up_proj.weight"), c.read("model.layers.0.mlp.up_proj.weight"))


def test_synthetic_refuses_foreign_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="not written by write_synthetic"):
        write_synthetic(tmp_path / "x", "tiny", overwrite=True)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep"


def test_presets_have_real_shapes():
    n = sum(torch.Size(s.shape).numel() for s in tensor_specs(synthetic_config("7b")))
    assert n == 6_738_415_616  # LLaMA-2-7B
    n = sum(torch.Size(s.shape).numel() for s in tensor_specs(synthetic_config("1.1b")))
    assert n == 1_100_048_384  # TinyLlama-1.1B
    assert PRESETS["1.1b"]["num_key_value_heads"] == 4


def test_synth_cli(tmp_path, capsys):
    from fxprune.cli import main
    assert main(["synth", "tiny", "--out", str(tmp_path / "s"), "--layers", "1"]) == 0
    assert "1 layers" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 1
