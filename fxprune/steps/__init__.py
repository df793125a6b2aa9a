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
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from ..errors import FxPruneError, RecipeError
from ..registry import import_all

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
    artifacts: Any = None  # directory for files steps write (the export step); None: none may be written
    tokenizer: Any = None  # the model's tokenizer, for files that carry one
    source: str = ""       # the model spec the run loaded (``smollm2``, a .gguf file, a directory)


class Step:
    """Base of step configs (subclasses are frozen dataclasses)."""

    kind: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True

    def check(self, env: StepEnv) -> None:
        """Refuse a run this step cannot finish (e.g. nowhere to write), before any step's work."""

    def planning(self, env: StepEnv) -> list:
        raise NotImplementedError

    def applying(self, env: StepEnv) -> list:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, name: str, fields: dict) -> "Step":
        raise NotImplementedError


def _checked(name: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits the simple type ``hint`` (int, float, bool, str, Literal); ints pass as
    floats. Other hints are left to the config's own validation."""
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            raise RecipeError(f"{where}: field {name!r}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        raise RecipeError(f"{where}: field {name!r}: expected {hint.__name__}, got {value!r}")
    return value


def dataclass_from(cls, fields: dict, where: str):
    """``cls(**fields)`` with unknown names and values of the wrong simple type reported as
    ``RecipeError`` naming ``where`` and the field; the config's own checks run after."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    try:
        hints = get_type_hints(cls)
    except Exception:  # unresolvable annotations: no generic check
        hints = {}
    fields = {k: _checked(k, v, hints.get(k), where) for k, v in fields.items()}
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


import_all(__name__, __path__)

__all__ = ["STEPS", "Step", "StepEnv", "dataclass_from", "parse_step", "register_step", "step_kinds", "step_type"]
