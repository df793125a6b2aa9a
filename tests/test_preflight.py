"""Fail early (issue 14, items 6 and 8): memory estimated from headers before loading, refused with the
setting that would fit; output and disk checked before the expensive work; the GGUF marker is hidden
while saving."""
import struct
import types

import pytest
import torch

from fxprune import preflight
from fxprune.cli import main
from fxprune.errors import ModelLoadError, ResourceError
from fxprune.preflight import (GiB, JobSizes, check_memory, estimate_peak, model_facts, parse_size,
                               read_gguf_header)


@pytest.mark.real
def test_smollm2_facts_come_from_the_gguf_header_without_loading():
    f = model_facts("smollm2")
    assert (f.params, f.hidden, f.layers, f.intermediate, f.vocab, f.heads, f.kv_heads) == \
        (134_515_008, 576, 30, 1536, 49152, 9, 3)
    e = estimate_peak(f, JobSizes("sparsity", 128, 512))
    assert e.terms["weights"] == 4 * 134_515_008 and e.peak > e.terms["weights"]


def test_refusal_names_the_terms_and_a_setting_that_fits():
    f = model_facts("tiny:llama")
    job = JobSizes("structured", samples=100_000, seq_len=512, batch=8)
    est = estimate_peak(f, job)
    budget = est.fixed + (est.peak - est.fixed) // 4  # a quarter of the calibration stream fits
    with pytest.raises(ResourceError, match=r"calibration stream.*calib_samples: (\d+) would fit") as e:
        check_memory(f, job, budget)
    fit = int(e.value.args[0].split("calib_samples: ")[1].split()[0])
    assert 0 < fit < 100_000
    assert estimate_peak(f, JobSizes("structured", fit, 512, 8)).peak <= budget
    assert check_memory(f, JobSizes("structured", fit, 512, 8), budget)
    with pytest.raises(ResourceError, match="alone need"):
        check_memory(f, job, 1 << 20)
    assert check_memory(f, job, 0)  # 0: no check


def test_cli_refuses_before_loading(tmp_path, monkeypatch, capsys):
    import fxprune.loading as loading

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the memory check")
    monkeypatch.setattr(loading, "load_model", no_load)
    rc = main(["--memory-limit", "2MiB", "sparsify", "tiny:llama", "--recipe", "wanda-50", "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "ResourceError" in err[0] and "--memory-limit 0" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_bad_out_before_loading(tmp_path, monkeypatch, capsys):
    import fxprune.loading as loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    rc = main(["sparsify", "tiny:llama", "--recipe", "wanda-50", "--out", str(tmp_path / "mine")])
    assert rc == 2 and "OutputError" in capsys.readouterr().err


@pytest.mark.parametrize("data", [b"", b"GGU", b"GGUF\x03\x00\x00\x00", b"GGUF" + struct.pack("<IQQ", 3, 2**62, 1),
                                  b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 10**9) + b"key",
                                  b"GGUF" + struct.pack("<IQQ", 9, 0, 0), b"\x00" * 64])
def test_malformed_gguf_headers_are_typed_errors(tmp_path, data):
    p = tmp_path / "m.gguf"
    p.write_bytes(data)
    with pytest.raises(ModelLoadError, match="m.gguf"):
        read_gguf_header(p)


def test_sizes_and_available_memory():
    assert parse_size("8GiB") == 8 * GiB and parse_size("512M") == 512 << 20 and parse_size("0") == 0
    with pytest.raises(ValueError):
        parse_size("lots")
    assert preflight.available_memory() > 0


def test_gguf_quantizer_marker_is_hidden_while_saving_and_restored(tmp_path):
    from fxprune.models.tiny import tiny_model
    from fxprune.sparsity import save_sparse_model
    m = tiny_model("llama")
    q = types.SimpleNamespace(quantization_config=types.SimpleNamespace(quant_method="gguf"))
    m.hf_quantizer = q
    m.config.quantization_config = {"quant_method": "gguf"}
    seen = {}
    real = type(m).save_pretrained

    def spy(self, *a, **k):
        seen["marker"] = self.hf_quantizer
        seen["cfg"] = getattr(self.config, "quantization_config", None)
        return real(self, *a, **k)
    type(m).save_pretrained = spy
    try:
        save_sparse_model(m, tmp_path / "s")
    finally:
        type(m).save_pretrained = real
    assert seen == {"marker": None, "cfg": None}
    assert m.hf_quantizer is q and m.config.quantization_config == {"quant_method": "gguf"}
    assert (tmp_path / "s" / "model.safetensors").is_file()
