"""Sparsity targets: the pattern (``Unstructured`` ratio or ``NM``) and which layers take it.

Strings exist only in recipes; ``parse_pattern`` and ``parse_layers`` read them once into these types.
Each method's own config lives in its file under ``methods/``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import RecipeError


@dataclass(frozen=True)
class Unstructured:
    """Zero a fraction ``ratio`` of the weights of each layer.

    ``granularity="row"``: every output row gets exactly ``round(ratio · d_in)`` zeros;
    ``"layer"``: the layer gets exactly ``round(ratio · d_out · d_in)`` zeros, rows may differ.
    """

    ratio: float
    granularity: Literal["row", "layer"] = "row"

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise RecipeError(f"sparsity.ratio must be in [0, 1), got {self.ratio}")
        if self.granularity not in ("row", "layer"):
            raise RecipeError(f"sparsity.granularity must be 'row' or 'layer', got {self.granularity!r}")

    @property
    def label(self) -> str:
        return f"{self.ratio:.0%}"


@dataclass(frozen=True)
class NM:
    """``n`` zeros in every group of ``m`` consecutive input columns of every row (SparseGPT's prunen:prunem;
    2:4 and 4:8 are the hardware patterns and keep exactly half)."""

    n: int
    m: int

    def __post_init__(self):
        if not (0 < self.n < self.m):
            raise RecipeError(f"N:M sparsity needs 0 < n < m, got {self.n}:{self.m}")

    @property
    def ratio(self) -> float:
        return self.n / self.m

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}"


Pattern = Unstructured | NM


@dataclass(frozen=True)
class LayerSelection:
    """Which linear layers of the decoder blocks are sparsified, and per-layer overrides.

    Patterns are ``fnmatch`` globs on the full module name (e.g. ``model.layers.3.mlp.down_proj``).
    ``overrides`` maps a glob to an unstructured ratio (non-uniform sparsity; first match wins);
    it is only valid with an unstructured pattern.
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: tuple[tuple[str, float], ...] = ()

    def selected(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in self.include) and not any(
            fnmatch.fnmatch(name, p) for p in self.exclude)

    def pattern_for(self, name: str, default: Pattern) -> Pattern:
        for glob, ratio in self.overrides:
            if fnmatch.fnmatch(name, glob):
                if not isinstance(default, Unstructured):
                    raise RecipeError(f"layers.overrides[{glob!r}]: per-layer ratios need unstructured sparsity")
                return Unstructured(ratio, default.granularity)
        return default


def parse_pattern(spec: Any) -> Pattern:
    """``"2:4"`` (N:M), ``"50%"`` or ``0.5`` (unstructured, per row), ``{n, m}``, or
    ``{ratio, granularity: row|layer}``."""
    if isinstance(spec, (NM, Unstructured)):
        return spec
    if isinstance(spec, str) and ":" in spec:
        try:
            n, m = (int(x) for x in spec.split(":"))
        except ValueError:
            raise RecipeError(f"sparsity: cannot parse N:M pattern {spec!r}") from None
        return NM(n, m)
    if isinstance(spec, str) and spec.endswith("%"):
        try:
            return Unstructured(float(spec[:-1]) / 100)
        except ValueError:
            raise RecipeError(f"sparsity: cannot parse percentage {spec!r}") from None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Unstructured(float(spec))
    if isinstance(spec, dict):
        if set(spec) == {"n", "m"}:
            try:
                return NM(int(spec["n"]), int(spec["m"]))
            except (TypeError, ValueError):
                raise RecipeError(f"sparsity: n and m must be integers, got {spec!r}") from None
        if "ratio" in spec:
            extra = set(spec) - {"ratio", "granularity"}
            if extra:
                raise RecipeError(f"sparsity: unknown field(s) {sorted(extra)}")
            try:
                return Unstructured(float(spec["ratio"]), spec.get("granularity", "row"))
            except (TypeError, ValueError):
                raise RecipeError(f"sparsity: ratio must be a number, got {spec['ratio']!r}") from None
    raise RecipeError(f"sparsity: expected 'N:M', a ratio or {{ratio, granularity}}, got {spec!r}")


def pattern_spec(p: Pattern):
    """The recipe form of a pattern (``parse_pattern(pattern_spec(p)) == p``)."""
    if isinstance(p, NM):
        return f"{p.n}:{p.m}"
    return p.ratio if p.granularity == "row" else {"ratio": p.ratio, "granularity": p.granularity}


def parse_layers(d: Any, pattern: Pattern) -> LayerSelection:
    """``{include: [globs], exclude: [globs], overrides: {glob: ratio}}`` (all optional)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise RecipeError(f"layers: expected a mapping, got {d!r}")
    bad = set(d) - {"include", "exclude", "overrides"}
    if bad:
        raise RecipeError(f"layers: unknown field(s) {sorted(bad)}")
    def globs(key, default):
        v = d.get(key, default)
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise RecipeError(f"layers.{key}: expected a list of glob strings, got {v!r}")
        return tuple(v)
    over = d.get("overrides") or {}
    if not isinstance(over, dict):
        raise RecipeError(f"layers.overrides: expected {{glob: ratio}}, got {over!r}")
    try:
        overrides = tuple((str(k), float(v)) for k, v in over.items())
    except (TypeError, ValueError):
        raise RecipeError(f"layers.overrides: ratios must be numbers, got {over!r}") from None
    layers = LayerSelection(globs("include", ("*",)), globs("exclude", ()), overrides)
    if layers.overrides and not isinstance(pattern, Unstructured):
        raise RecipeError("layers.overrides: per-layer ratios need unstructured sparsity")
    return layers


def layers_spec(s: LayerSelection) -> dict:
    return {"include": list(s.include), "exclude": list(s.exclude), "overrides": dict(s.overrides)}
