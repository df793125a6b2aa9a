"""The one recipe format for every method: a calibration block and a list of steps.

    name: olica-attn-goa-liar-20-then-2of4
    calibration: {source: c4, samples: 128, seq_len: 128, batch_size: 8, seed: 0}
    steps:
      - structured: {criterion: goa, reconstruction: liar, attention: olica, target: 0.2}
      - mrp: {sparsity: "2:4"}

Each step is parsed by the config type its kind registers (``fxprune/steps``): ``structured``, and
one kind per sparsity method (``magnitude``, ``wanda``, ``sparsegpt``, ``mrp``). Steps run one after
another; each later step calibrates on the model the earlier ones produced.

``load_recipe(spec)`` is the one loader (CLI and Python API): a ``Recipe``, a dict, a YAML/JSON
file, or the name of a shipped recipe (``fxprune/recipes/``). The two older flat formats (a
structured recipe with ``method: structured`` and ``calib_*`` fields; a sparsity recipe with
``method: <name>``, ``sparsity``, ``options``, ``layers``, ``calibration: {samples, seqlen}``) are
read too and converted. Strings exist only here: everything after is typed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .data import CalibrationConfig
from .errors import FxPruneError, RecipeError
from .steps import Step, dataclass_from, parse_step

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


#: A recipe's calibration block: ``source``, ``samples``, ``seq_len``, ``seed``, ``batch_size``.
Calibration = CalibrationConfig


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: the calibration windows every step uses and the steps, in order."""

    steps: tuple = ()
    calibration: Calibration = field(default_factory=Calibration)
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        if any(s.kind == "export" for s in self.steps if isinstance(s, Step)):
            from .steps.export import round_for_export  # widths that suit the exported type
            object.__setattr__(self, "steps", round_for_export(self.steps))
        if not self.steps:
            raise RecipeError(f"recipe {self.name!r}: no steps")
        for s in self.steps:
            if not isinstance(s, Step):
                raise RecipeError(f"recipe {self.name!r}: {s!r} is not a step config")

    @property
    def needs_calibration(self) -> bool:
        return any(s.needs_calibration for s in self.steps)

    def with_target(self, target: float) -> "Recipe":
        """The same recipe with every structured step's ``target`` set to ``target``."""
        from .steps.structured import StructuredStep
        if not any(isinstance(s, StructuredStep) for s in self.steps):
            raise RecipeError(f"recipe {self.name!r} has no structured step whose target could be set")
        steps = [replace(s, target=target) if isinstance(s, StructuredStep) else s for s in self.steps]
        return replace(self, steps=tuple(steps), name=f"{self.name}@{target:g}" if self.name else "")

    def with_calibration(self, **changes) -> "Recipe":
        """The same recipe with these fields of its calibration block changed (``source``, ``samples``,
        ``seq_len``, ``seed``, ``batch_size``, ``bos``); bad values are a ``RecipeError``."""
        try:
            return replace(self, calibration=replace(self.calibration, **changes))
        except (FxPruneError, TypeError) as e:
            raise RecipeError(f"calibration override {changes}: {e}") from e

    def to_dict(self) -> dict:
        return {"name": self.name, "calibration": asdict(self.calibration),
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: Any, name: str = "") -> "Recipe":
        if not isinstance(d, dict):
            raise RecipeError(f"recipe {name!r}: expected a mapping at the top level, got {type(d).__name__}")
        if "steps" not in d:
            return _from_legacy(d, name)
        unknown = sorted(set(d) - {"name", "calibration", "steps"})
        if unknown:
            raise RecipeError(f"recipe {name!r}: unknown field(s) {unknown}; known: ['calibration', 'name', 'steps']")
        cal = d.get("calibration") or {}
        if not isinstance(cal, dict):
            raise RecipeError(f"recipe {name!r}: calibration must be a mapping, got {cal!r}")
        steps = d["steps"]
        if not isinstance(steps, list) or not steps:
            raise RecipeError(f"recipe {name!r}: steps must be a non-empty list")
        rname = d.get("name", name)
        if not isinstance(rname, str):
            raise RecipeError(f"recipe {name!r}: name must be a string, got {rname!r}")
        return cls(tuple(parse_step(s, i) for i, s in enumerate(steps)),
                   dataclass_from(Calibration, dict(cal), "calibration"), rname or name)


# ---------------------------------------------------------------------------------------- legacy
_LEGACY_CAL = {"calib_source": "source", "calib_samples": "samples", "calib_seq_len": "seq_len",
               "batch_size": "batch_size", "seed": "seed"}


def _from_legacy(d: dict, name: str) -> Recipe:
    """The two flat formats of fxprune <= 0.1 (see the module docstring)."""
    d = dict(d)
    method = d.pop("method", "structured")
    if method == "structured":
        cal = {new: d.pop(old) for old, new in _LEGACY_CAL.items() if old in d}
        cal.setdefault("seq_len", 128)
        step = parse_step({"structured": d}, 0)
        return Recipe((step,), dataclass_from(Calibration, cal, "calibration"), name)
    extra = sorted(set(d) - {"name", "sparsity", "options", "layers", "calibration"})
    if extra:
        raise RecipeError(f"recipe {name!r}: unknown field(s) {extra}")
    options = d.get("options") or {}
    if not isinstance(options, dict):
        raise RecipeError(f"recipe {name!r}: options must be a mapping, got {options!r}")
    fields = {**options, **({"sparsity": d["sparsity"]} if "sparsity" in d else {}),
              **({"layers": d["layers"]} if "layers" in d else {})}
    step = parse_step({method: fields}, 0)
    cal = d.get("calibration") or {}
    if not isinstance(cal, dict) or set(cal) - {"samples", "seqlen"}:
        raise RecipeError(f"recipe {name!r}: calibration takes samples and seqlen, got {cal!r}")
    calibration = dataclass_from(Calibration, {"samples": cal.get("samples", 128), "seq_len": cal.get("seqlen", 512)},
                                 "calibration")
    return Recipe((step,), calibration, d.get("name", name))


# ---------------------------------------------------------------------------------------- loading
def builtin_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) + sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def resolve_recipe_path(spec: str | Path) -> Path:
    """A recipe file path, or the file of a shipped recipe called ``spec``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    for cand in (RECIPE_DIR / f"{spec}.yaml", RECIPE_DIR / f"{spec}.json"):
        if cand.is_file():
            return cand
    raise RecipeError(f"recipe {str(spec)!r}: no such file and no shipped recipe of that name "
                      f"(shipped: {', '.join(builtin_recipes())})")


def read_recipe_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe file {str(path)!r}: cannot read ({type(e).__name__}: {e})") from e
    try:
        if path.suffix == ".json":
            return json.loads(text)
        import yaml
        return yaml.safe_load(text)
    except Exception as e:  # yaml/json raise many kinds; name the file
        raise RecipeError(f"recipe file {str(path)!r}: cannot parse ({type(e).__name__}: {e})") from e


def load_recipe(spec: Recipe | dict | str | Path) -> Recipe:
    """The one recipe loader (see the module docstring)."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, Step):
        return Recipe((spec,))
    if isinstance(spec, dict):
        return Recipe.from_dict(spec)
    if not isinstance(spec, (str, Path)):
        raise RecipeError(f"recipe: expected a Recipe, a dict, a file or a shipped name, got {type(spec).__name__}")
    path = resolve_recipe_path(spec)
    return Recipe.from_dict(read_recipe_file(path), path.stem)


__all__ = ["Calibration", "RECIPE_DIR", "Recipe", "builtin_recipes", "load_recipe", "resolve_recipe_path"]
