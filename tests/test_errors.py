"""Bad input gets a typed error naming the group, op, module or file at fault."""
import pytest
import torch
from torch import nn

from fxprune.analysis.analyser import analyse
from fxprune.errors import CaptureError, ModelLoadError, PlanError
from fxprune.loading import load_model
from fxprune.models.tiny import tiny_model
from fxprune.surgery import plan_from_q_heads, prune


@pytest.fixture(scope="module")
def llama():
    m = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2)
    return m, analyse(m)


@pytest.mark.parametrize("plan,match", [
    ({"model.layers.0.mlp": [0, 96]}, r"model.layers.0.mlp.*out of range"),
    ({"model.layers.0.mlp": [3, 3, 4]}, r"model.layers.0.mlp.*duplicate.*\[3\]"),
    ({"model.layers.0.mlp": []}, r"model.layers.0.mlp.*every unit"),
    ({"model.layers.9.mlp": [0]}, r"model.layers.9.mlp.*no such group"),
    ({"model:residual": [0]}, r"residual.*not prunable"),
])
def test_bad_plans(llama, plan, match):
    m, a = llama
    with pytest.raises(PlanError, match=match) as e:
        prune(m, plan, a)
    assert e.value.group_id == next(iter(plan))


def test_non_uniform_q_heads_across_kv_groups(llama):
    _, a = llama
    # 4 q heads in 2 KV groups (n_rep=2): keeping heads 0 and 3 keeps position 0 in group 0 but
    # position 1 in group 1.
    with pytest.raises(PlanError, match="same positions in every one of the 2 KV groups"):
        plan_from_q_heads(a, "model.layers.0.self_attn", [0, 3])
    assert plan_from_q_heads(a, "model.layers.0.self_attn", [1, 3]) == {"model.layers.0.self_attn:q_per_kv": [1]}


def test_unreadable_model_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="nope"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="bad.gguf"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError, match="unknown tiny family"):
        load_model("tiny:nosuch")


def test_capture_failure_names_the_class():
    class Broken(nn.Module):
        def forward(self, input_ids):
            if input_ids.sum() > 0:  # data-dependent control flow cannot be exported
                return input_ids * 2
            return input_ids

    with pytest.raises(CaptureError, match="Broken") as e:
        analyse(Broken())
    assert e.value.cause is not None


def test_cli_reports_errors(capsys):
    from fxprune.cli import main
    assert main(["inspect", "/nonexistent/model"]) == 2
    assert "/nonexistent/model" in capsys.readouterr().err
