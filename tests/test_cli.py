"""``fxprune inspect`` prints the documented JSON."""
import json

from fxprune.cli import main


def test_inspect_json(capsys):
    assert main(["inspect", "tiny:qwen2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny:qwen2" and out["capture_seconds"] > 0 and out["analysis_seconds"] > 0
    ids = {g["id"]: g for g in out["groups"]}
    g = ids["model.layers.1.self_attn:q_per_kv"]
    assert {k for k in g} >= {"id", "kind", "unit_size", "units", "params_per_unit", "members", "blocked_by"}
    assert g["kind"] == "attn_q_per_kv" and g["units"] == 3
    assert {(m["param"], m["dim"]) for m in g["members"]} == {
        ("model.layers.1.self_attn.q_proj.weight", 0), ("model.layers.1.self_attn.q_proj.bias", 0),
        ("model.layers.1.self_attn.o_proj.weight", 1)}
    assert ids["model:residual"]["blocked_by"]


def test_inspect_table(capsys):
    assert main(["inspect", "tiny:mamba"]) == 0
    text = capsys.readouterr().out
    assert "backbone.layers.1.mixer" in text and "ssm_channels" in text
