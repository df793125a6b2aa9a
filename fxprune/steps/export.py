"""The export step: write the model, as the steps before it left it, as a file an inference engine
runs (GGUF for llama.cpp, ``fxprune.export``). Recipe form::

    steps:
      - structured: {target: 0.2, ...}
      - mrp: {sparsity: "2:4"}
      - export: {format: gguf, dtype: q8_0}

The file goes into the run's artifacts directory: with ``fxprune prune --out DIR`` it is written
inside DIR beside the checkpoint (atomically with it); from Python, ``fxprune.prune(model, recipe,
windows, artifacts=DIR)``. Its name is ``file`` or ``model.<dtype>.gguf``. A block-quantised
``dtype`` also rounds the ``channel_multiple`` of every structured step before it to the row length
the type needs (``fxprune.export.types.deploy_channel_multiple``), when the recipe is built, so no
FFN width needs padding at export time. An export step changes nothing in the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

from . import Step, dataclass_from, register_step


@register_step("export")
@dataclass(frozen=True)
class ExportStep(Step):
    """``format``: ``gguf``; ``dtype``: ``f32``, ``f16``, ``q8_0`` or ``q4_0``; ``file``: the file name
    inside the artifacts directory (default ``model.<dtype>.gguf``); ``pad``: pad FFN widths with zero
    channels to the type's row multiple (exact) instead of storing such tensors as f16."""

    kind: ClassVar[str] = "export"
    needs_calibration: ClassVar[bool] = False

    format: Literal["gguf"] = "gguf"
    dtype: str = "f16"
    file: str = ""
    pad: bool = True

    def __post_init__(self):
        from ..errors import RecipeError
        from ..export.types import gguf_type
        gguf_type(self.dtype)  # ExportError naming the type and the choices
        if self.file and (self.file != self.file.strip() or "/" in self.file or "\\" in self.file
                          or self.file.startswith(".")):
            raise RecipeError(f"file {self.file!r}: a plain file name inside the output directory")

    @property
    def filename(self) -> str:
        return self.file or f"model.{self.dtype}.gguf"

    @classmethod
    def from_fields(cls, name, fields):
        return dataclass_from(cls, fields, f"step {name!r}")

    def to_dict(self) -> dict:
        return {"export": asdict(self)}

    def check(self, env) -> None:
        if env.artifacts is None:
            from ..errors import RecipeError
            raise RecipeError("recipe step 'export' writes a file: run it with `fxprune prune --out DIR` or "
                              "fxprune.prune(..., artifacts=DIR)")

    def planning(self, env) -> list:
        return []

    def applying(self, env) -> list:
        from ..passes.export import WriteExport
        return [WriteExport(self, env)]


def round_for_export(steps: tuple) -> tuple:
    """``steps`` with each structured step rounded for the type of the first export step after it
    (``fxprune.export.types.rounded_for``); unchanged without an export step."""
    from ..export.types import rounded_for
    from .structured import StructuredStep
    out = list(steps)
    for i, s in enumerate(out):
        export = next((e for e in out[i + 1:] if isinstance(e, ExportStep)), None)
        if isinstance(s, StructuredStep) and export is not None:
            out[i] = rounded_for(s, export.dtype)
    return tuple(out)
