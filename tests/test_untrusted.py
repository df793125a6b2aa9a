"""Untrusted checkpoints (issue 14, item 5): fxprune never runs a checkpoint's code, reads weights only
from safetensors unless the user opts in to pickle, and checks recorded shapes before allocating."""
import json

import pytest
import torch

from fxprune.analysis.analyser import analyse
from fxprune.checkpoint import load_pruned, save_pruned
from fxprune.cli import main
from fxprune.errors import CheckpointError, ModelLoadError
from fxprune.loading import load_model
from fxprune.models.tiny import tiny_model
from fxprune.surgery import prune

from conftest import half_plan


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    torch.manual_seed(0)
    m = tiny_model("llama")
    a = analyse(m)
    prune(m, half_plan(a, seed=1, vary=True), a, verify=False)  # per-layer widths: a structure checkpoint
    d = tmp_path_factory.mktemp("ck") / "pruned"
    save_pruned(m, d)
    assert (d / "modeling_fxprune.py").is_file()
    return m, d


def tamper(src, dst, sentinel):
    import shutil
    shutil.copytree(src, dst)
    (dst / "modeling_fxprune.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\nraise SystemExit('checkpoint code ran')\n")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_fxprune.Evil", "AutoModelForCausalLM": "modeling_fxprune.Evil"}
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["modeling_fxprune.Evil", None]}}))
    return dst


def test_tampered_modeling_file_is_never_run(pruned, tmp_path, capsys):
    m, d = pruned
    sentinel = tmp_path / "RAN"
    evil = tamper(d, tmp_path / "evil", sentinel)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        want = m(input_ids=ids).logits
        assert torch.equal(load_pruned(evil)(input_ids=ids).logits, want)
        import fxprune
        assert torch.equal(fxprune.load_pruned(evil)(input_ids=ids).logits, want)
        assert torch.equal(load_model(str(evil)).model(input_ids=ids).logits, want)
    text = tmp_path / "t.txt"
    text.write_text("hello world, " * 200)
    assert main(["inspect", str(evil)]) == 0
    assert main(["eval", str(evil), "--ppl", str(text), "--seq-len", "16", "--windows", "2"]) == 0
    assert not sentinel.exists()


def test_pickle_weights_are_refused_unless_opted_in(tmp_path, capsys):
    m = tiny_model("llama")
    d = tmp_path / "pkl"
    d.mkdir()
    m.config.save_pretrained(d)
    torch.save(m.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin.*pickle"):
        load_model(str(d))
    assert main(["inspect", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-pickle" in err[0]
    assert main(["--allow-pickle", "inspect", str(d)]) == 0
    from fxprune import trust
    assert trust.ALLOW_PICKLE is False  # one command only


def test_tampered_shapes_are_refused_before_allocating(pruned, tmp_path):
    import shutil
    _, d = pruned
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    name = next(iter(cfg["fxprune_structure"]["params"]))
    cfg["fxprune_structure"]["params"][name] = [10 ** 7, 10 ** 6]  # 40 TB if allocated
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match the recorded structure"):
        load_pruned(bad)


def test_index_pointing_outside_the_checkpoint_is_refused(pruned, tmp_path):
    import shutil
    _, d = pruned
    bad = tmp_path / "idx"
    shutil.copytree(d, bad)
    (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../../etc/passwd"}}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_pruned(bad)


@pytest.mark.parametrize("cls", ["os", "Evil", "logging", "PreTrainedModel.__init__"])
def test_class_names_are_looked_up_among_transformers_models_only(pruned, tmp_path, cls):
    import shutil
    _, d = pruned
    bad = tmp_path / "cls"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["fxprune_base_class"] = cls
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model class"):
        load_pruned(bad)


def test_config_describing_far_more_than_the_weights_is_refused_before_allocating(tmp_path):
    d = tmp_path / "m"
    tiny_model("llama").save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 10 ** 10  # 640 GB of embeddings if allocated
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="config and weights do not match"):
        load_model(str(d))
