"""Recipe steps: one registered config type per kind of step, its handler beside it.

A step is a frozen dataclass registered under the name recipes use for it (``@register_step``). It
turns itself into compiler passes in two lists:

* ``planning(env)``: the decisions that need the whole model (analysis, scores, allocation, layer
  selection). ``--dry-run`` runs exactly these and changes nothing.
* ``applying(env)``: the work that changes the model: a pass that drives the block-wise runner
  (``fxprune.calibration.runner``) with the step's ``BlockOp`` objects, then surgery and
  verification.

``StepEnv`` carries what every step shares in a run: calibration windows, the Lightning ``Engine``
and the calibration batch size. Steps of one recipe run one after another; each later step
calibrates on the model the earlier ones produced.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import FxPruneError, RecipeError

STEPS: dict[str, type] = {}


def register_step(*names: str):
    """Register a step config class under one or more recipe names."""
    def deco(cls):
        for n in names:
            STEPS[n] = cls
        return cls
    return deco


@dataclass(frozen=True)
class StepEnv:
    """What the steps of one run share."""

    windows: Any          # calibration token windows [n, L] (None for data-free steps)
    engine: Any           # fxprune.calibration.Engine
    batch_size: int = 8


class Step:
    """Base of step configs (subclasses are frozen dataclasses)."""

    kind: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True

    def planning(self, env: StepEnv) -> list:
        raise NotImplementedError

    def applying(self, env: StepEnv) -> list:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, name: str, fields: dict) -> "Step":
        raise NotImplementedError


def dataclass_from(cls, fields: dict, where: str):
    """``cls(**fields)`` with unknown names and bad values reported as ``RecipeError`` naming ``where``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**fields)
    except (FxPruneError, TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from e


def parse_step(item: Any, index: int) -> Step:
    """One entry of a recipe's ``steps`` list: ``{name: {fields}}``."""
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(f"steps[{index}]: expected a mapping with one key, the step kind "
                          f"(one of {sorted(STEPS)}), got {item!r}")
    (name, fields), = item.items()
    cls = step_type(name)
    if cls is None:
        raise RecipeError(f"steps[{index}]: unknown step kind {name!r}; known: {step_kinds()}")
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise RecipeError(f"steps[{index}] ({name}): expected a mapping of fields, got {fields!r}")
    try:
        return cls.from_fields(name, dict(fields))
    except RecipeError as e:
        raise RecipeError(f"steps[{index}]: {e}") from e


def step_type(name: str):
    """The step config class recipes call ``name``: a registered step, or a sparsity method."""
    from .sparsity import sparsity_step_type
    return STEPS.get(name) or sparsity_step_type(name)


def step_kinds() -> list[str]:
    from ..sparsity.methods import METHOD_NAMES
    return sorted(set(STEPS) | set(METHOD_NAMES))


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["STEPS", "Step", "StepEnv", "dataclass_from", "parse_step", "register_step", "step_kinds", "step_type"]
