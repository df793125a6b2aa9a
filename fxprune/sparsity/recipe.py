"""Recipe files (YAML or JSON) → ``SparsityRecipe``. Strings are parsed here once.

Schema (every key but ``method`` and ``sparsity`` optional)::

    name: mrp-2of4
    method: mrp                 # magnitude | wanda | sparsegpt | mrp
    sparsity: "2:4"             # "N:M" (N zeros per M), a ratio 0.5, or {ratio: 0.5, granularity: row|layer}
    options: {blocksize: 128, percdamp: 0.01}   # fields of the method's config class
    layers: {include: ["*"], exclude: ["*.lm_head"], overrides: {"*.mlp.down_proj": 0.4}}
    calibration: {samples: 128, seqlen: 512}

A bare name (``mrp-2of4``) is looked up in ``fxprune/recipes/``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .config import NM, LayerSelection, SparsityRecipe, Unstructured
from .methods import METHOD_NAMES

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
_TOP_KEYS = {"name", "method", "sparsity", "options", "layers", "calibration"}


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) + sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def _parse_pattern(spec: Any):
    if isinstance(spec, str) and ":" in spec:
        try:
            n, m = (int(x) for x in spec.split(":"))
        except ValueError:
            raise RecipeError(f"sparsity: cannot parse N:M pattern {spec!r}") from None
        return NM(n, m)
    if isinstance(spec, str) and spec.endswith("%"):
        return Unstructured(float(spec[:-1]) / 100)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Unstructured(float(spec))
    if isinstance(spec, dict):
        if {"n", "m"} <= spec.keys():
            return NM(int(spec["n"]), int(spec["m"]))
        if "ratio" in spec:
            extra = set(spec) - {"ratio", "granularity"}
            if extra:
                raise RecipeError(f"sparsity: unknown field(s) {sorted(extra)}")
            return Unstructured(float(spec["ratio"]), spec.get("granularity", "row"))
    raise RecipeError(f"sparsity: expected 'N:M', a ratio or {{ratio, granularity}}, got {spec!r}")


def parse_recipe(d: dict, name: str = "") -> SparsityRecipe:
    """Validate a recipe dict (as read from YAML/JSON) and build the typed recipe; any malformed
    value is a ``RecipeError`` naming the recipe."""
    try:
        return _parse_recipe(d, name)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
        raise RecipeError(f"recipe {name!r}: malformed value ({type(e).__name__}: {e})") from e


def _parse_recipe(d: dict, name: str = "") -> SparsityRecipe:
    if not isinstance(d, dict):
        raise RecipeError(f"recipe {name!r}: top level must be a mapping")
    extra = set(d) - _TOP_KEYS
    if extra:
        raise RecipeError(f"recipe {name!r}: unknown field(s) {sorted(extra)}")
    for key in ("method", "sparsity"):
        if key not in d:
            raise RecipeError(f"recipe {name!r}: missing field {key!r}")
    if d["method"] not in METHOD_NAMES:
        raise RecipeError(f"method: unknown {d['method']!r}; known: {sorted(METHOD_NAMES)}")
    cfg_type = METHOD_NAMES[d["method"]]
    opts = dict(d.get("options") or {})
    known = {f.name for f in dataclasses.fields(cfg_type)}
    bad = set(opts) - known
    if bad:
        raise RecipeError(f"options: {sorted(bad)} not valid for method {d['method']!r} (valid: {sorted(known)})")
    method = cfg_type(**opts)
    pattern = _parse_pattern(d["sparsity"])
    lay = dict(d.get("layers") or {})
    bad = set(lay) - {"include", "exclude", "overrides"}
    if bad:
        raise RecipeError(f"layers: unknown field(s) {sorted(bad)}")
    layers = LayerSelection(tuple(lay.get("include", ("*",))), tuple(lay.get("exclude", ())),
                            tuple((str(k), float(v)) for k, v in (lay.get("overrides") or {}).items()))
    if layers.overrides and not isinstance(pattern, Unstructured):
        raise RecipeError("layers.overrides: per-layer ratios need unstructured sparsity")
    cal = dict(d.get("calibration") or {})
    bad = set(cal) - {"samples", "seqlen"}
    if bad:
        raise RecipeError(f"calibration: unknown field(s) {sorted(bad)}")
    return SparsityRecipe(method, pattern, layers, int(cal.get("samples", 128)), int(cal.get("seqlen", 512)),
                          d.get("name", name))


def load_recipe(spec: str | Path | dict) -> SparsityRecipe:
    """Load a recipe from a dict, a ``.yaml``/``.yml``/``.json`` file, or a built-in recipe name."""
    if isinstance(spec, dict):
        return parse_recipe(spec)
    path = Path(spec)
    if not path.is_file():
        for ext in (".yaml", ".json"):
            cand = RECIPE_DIR / (path.name if path.suffix else path.name + ext)
            if cand.is_file():
                path = cand
                break
        else:
            raise RecipeError(f"recipe {str(spec)!r}: no such file and no built-in recipe "
                              f"(built-in: {', '.join(builtin_recipes())})")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml
            d = yaml.safe_load(text)
    except Exception as e:
        raise RecipeError(f"recipe {str(path)!r}: cannot parse: {e}") from e
    return parse_recipe(d, path.stem)
