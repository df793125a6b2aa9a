"""Sparsity steps: unstructured or N:M zeros in the linear layers of every block, one step kind per
registered method (``sparsity/methods``: magnitude, wanda, sparsegpt, mrp, ...). Recipe form::

    steps:
      - mrp: {sparsity: "2:4", blocksize: 128, percdamp: 0.01, layers: {exclude: ["*.k_proj"]}}

``sparsity`` and ``layers`` are the step's target; every other field belongs to the method's config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import RecipeError
from ..sparsity.config import LayerSelection, Pattern, layers_spec, parse_layers, parse_pattern, pattern_spec
from . import Step, dataclass_from


@dataclass(frozen=True)
class SparsityStep(Step):
    """``method``: the method's config (its type says which kernel runs); ``pattern``: the target;
    ``layers``: which block linears take it (globs, per-layer ratio overrides)."""

    method: Any
    pattern: Pattern
    layers: LayerSelection = field(default_factory=LayerSelection)

    @property
    def kind(self) -> str:
        from ..sparsity.methods import METHOD_NAMES
        return next(n for n, t in METHOD_NAMES.items() if t is type(self.method))

    @property
    def needs_calibration(self) -> bool:
        return bool(getattr(self.method, "needs_calibration", True))

    @classmethod
    def from_fields(cls, name, fields):
        from ..sparsity.methods import METHOD_NAMES
        if "sparsity" not in fields:
            raise RecipeError(f"step {name!r}: missing field 'sparsity' (e.g. \"2:4\" or 0.5)")
        pattern = parse_pattern(fields.pop("sparsity"))
        layers = parse_layers(fields.pop("layers", None), pattern)
        method = dataclass_from(METHOD_NAMES[name], fields, f"step {name!r}")
        return cls(method, pattern, layers)

    def to_dict(self) -> dict:
        return {self.kind: {"sparsity": pattern_spec(self.pattern), "layers": layers_spec(self.layers),
                            **asdict(self.method)}}

    def planning(self, env) -> list:
        from ..passes.sparsity import SelectLinears
        return [SelectLinears(self)]

    def applying(self, env) -> list:
        from ..passes.sparsity import SparsifyBlocks
        return [SparsifyBlocks(self, env)]


def sparsity_step_type(name: str):
    """``SparsityStep`` if ``name`` is a registered sparsity method, else None."""
    from ..sparsity.methods import METHOD_NAMES
    return SparsityStep if name in METHOD_NAMES else None
