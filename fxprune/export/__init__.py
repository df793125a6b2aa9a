"""Deployment export: a (pruned) model as a GGUF file that llama.cpp runs, per-layer widths included.

    from fxprune.export import export_gguf, export_model
    report = export_model("out/smollm2-pruned", "smollm2-pruned.q8_0.gguf", dtype="q8_0")
    report = export_gguf(model, "m.gguf", dtype="f32", tokenizer=tok)      # any in-memory model
    report = fxprune.export(model_or_spec, "m.gguf", dtype="q8_0")         # the package is the verb too

Pieces (one job each): ``types`` (GGUF types and the row multiples they need; what pruning rounds
widths to), ``fold`` (fxprune modules -> dense weights, exactly, with a cost note), ``llama_family``
(read LLaMA/Mistral/Qwen2 layers), ``tokenizer`` (``tokenizer.*`` keys), ``gguf_writer`` (choose
``llama``/``qwen2``/``deci``, write with gguf-py), ``llamacpp`` (run a GGUF in llama.cpp: logits,
perplexity, greedy generation, timing).

Contract: for f32 files the llama.cpp logits equal the PyTorch model's up to float rounding (tests
assert relative 1e-4); anything that cannot be written exactly raises a typed error
(``UnsupportedFamilyError`` naming the family, ``UnsupportedModuleError`` naming the module,
``ExportError`` naming the file or tensor).
"""
from __future__ import annotations

import json
import sys
from types import ModuleType
from pathlib import Path

from .gguf_writer import ExportReport, choose_arch, write_gguf
from .llama_family import read_decoder
from .types import deploy_channel_multiple, gguf_type, head_multiple, row_multiple

__all__ = ["ExportReport", "choose_arch", "deploy_channel_multiple", "export_gguf", "export_model", "gguf_type",
           "head_multiple", "read_decoder", "row_multiple", "source_gguf", "write_gguf"]


def export_gguf(model, out, dtype: str = "f32", *, tokenizer=None, vocab_from=None, pad: bool = True,
                name: str = "", source: str = "", tokenizer_pre: str | None = None, overwrite: bool = False,
                log=print) -> ExportReport:
    """Write ``model`` to ``out`` as GGUF ``dtype``.

    The tokenizer keys come from ``vocab_from`` (a GGUF file: copied verbatim), else from the Hugging
    Face ``tokenizer`` (byte-level BPE), else the file has no tokenizer (ids only). ``pad``: pad FFN
    widths with zero channels to the type's block multiple (exact) instead of storing those tensors
    as f16. ``overwrite``: replace ``out`` if it is a GGUF file fxprune wrote (never another file)."""
    from . import tokenizer as tk
    from .gguf_writer import _check_target
    from .types import gguf_type as _t
    _t(dtype)
    _check_target(Path(out), overwrite)
    dec = read_decoder(model, log=log)
    if vocab_from is not None:
        meta = tk.from_gguf(vocab_from)
    elif tokenizer is not None and not type(tokenizer).__name__ == "ByteTokenizer":
        meta = tk.from_hf(tokenizer, dec.vocab, pre=tokenizer_pre)
    else:
        meta = tk.none(dec.vocab)
    return write_gguf(dec, out, dtype, meta, pad=pad, name=name, source=source, overwrite=overwrite, log=log)


def source_gguf(spec: str) -> Path | None:
    """The GGUF file a model spec came from, if any: ``smollm2``, a ``.gguf`` path, or a checkpoint
    directory whose ``fxprune_report.json`` names one of those as its ``model``."""
    from ..loading import DEFAULT_MODEL, smollm2_path
    if spec == DEFAULT_MODEL:
        return smollm2_path()
    p = Path(spec).expanduser()
    if spec.endswith(".gguf") and p.is_file():
        return p
    rep = p / "fxprune_report.json"
    if p.is_dir() and rep.is_file():
        try:
            origin = json.loads(rep.read_text()).get("model")
        except ValueError:
            return None
        if isinstance(origin, str) and origin != spec:
            return source_gguf(origin)
    return None


def export_model(spec: str, out, dtype: str = "f32", *, vocab_from=None, pad: bool = True,
                 tokenizer_pre: str | None = None, overwrite: bool = False, log=print) -> ExportReport:
    """Load ``spec`` (anything ``fxprune`` loads, e.g. a pruned checkpoint) and export it."""
    from ..loading import load_model
    from .gguf_writer import _check_target
    gguf_type(dtype)
    _check_target(Path(out), overwrite)  # before loading: a bad --out fails in seconds
    loaded = load_model(spec)
    vocab = vocab_from or source_gguf(spec)
    return export_gguf(loaded.model, out, dtype, tokenizer=loaded.tokenizer, vocab_from=vocab, pad=pad,
                       name=Path(str(spec)).name, source=str(spec), tokenizer_pre=tokenizer_pre,
                       overwrite=overwrite, log=log)


class _ExportVerb(ModuleType):
    """``fxprune.export(model, out, dtype="f16", **options)``: this package called as a function is
    the public verb: ``export_model`` for a model spec (str or path), ``export_gguf`` for an
    ``nn.Module``. Attribute access (``fxprune.export.export_gguf``, ``.types``...) is unchanged."""

    def __call__(self, model, out, dtype: str = "f16", **options) -> ExportReport:
        if isinstance(model, (str, Path)):
            return export_model(str(model), out, dtype, **options)
        return export_gguf(model, out, dtype, **options)


sys.modules[__name__].__class__ = _ExportVerb
