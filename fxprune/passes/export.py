"""The pass of an export step (``steps/export.py``): write the model as it is now to the run's
artifacts directory with ``fxprune.export.export_gguf``."""
from __future__ import annotations

from pathlib import Path

from .base import StepPass


class WriteExport(StepPass):
    """Writes ``<artifacts>/<step.filename>``; the report names the file, architecture, type, size and
    every cost note of the export (e.g. a tensor stored as f16 because its rows do not suit the type)."""

    name, ensures = "write_export", ("export",)

    def __init__(self, step, env):
        super().__init__(step)
        self.env = env

    def run(self, ctx):
        from ..export import export_gguf, source_gguf
        self.step.check(self.env)
        vocab = source_gguf(self.env.source) if self.env.source else None
        rep = export_gguf(ctx.model, Path(self.env.artifacts) / self.step.filename, self.step.dtype,
                          tokenizer=self.env.tokenizer, vocab_from=vocab, pad=self.step.pad,
                          name=self.step.filename, source=self.env.source, log=lambda *a, **k: None)
        ctx.facts["export"] = rep
        return {"file": self.step.filename, "arch": rep.arch, "dtype": rep.dtype, "bytes": rep.bytes,
                "tokenizer": rep.tokenizer, "notes": list(rep.notes)}
