"""Typed, validated, serialisable structured-pruning recipes (YAML/JSON at the boundary only)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import RecipeError

SCOPES = ("decoder_linear", "all")
ALLOCATIONS = ("uniform", "global", "pooled")
ATTENTION_UNITS = ("q_per_kv", "kv_groups")
ATTENTION_MODES = ("heads", "olica")
KINDS = ("attention", "ffn", "ssm")


def _type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return True


@dataclass(frozen=True)
class Recipe:
    """What to prune and how.

    ``target``: fraction of parameters to remove, counted over ``scope`` (``decoder_linear``: the
    weights of the prunable groups' linear layers; ``all``: every parameter). ``kinds``: which group
    families may lose units. ``attention_unit``: for GQA models, remove q heads uniformly in every
    KV group (``q_per_kv``) or whole KV groups. ``channel_multiple``: FFN/SSM widths are rounded to a
    multiple of it. ``protect_first``/``protect_last``: blocks left whole.

    ``attention``: ``heads`` removes whole heads; ``olica`` keeps every head and instead rotates V/O
    (orthogonal decomposition, removing rotated value channels) and factorises Q/K to low rank, with
    Olica's ratio split (``olica_k``) between Q/K, V/O and the FFN; ``olica_qk``: ``diag`` (the paper's
    activation-weighted SVD) or ``whitened`` (SVD whitened by the input Gram: least output error). ``lincal_layers`` > 0 inserts a
    low-rank linear calibration (rank ``lincal_rank_ratio * hidden``, ridge ``lincal_damping``) beside
    the pruned FFN of that many layers, chosen by how linearly predictable their residual is; it
    composes with any criterion, reconstruction and attention mode."""

    criterion: str = "flap"
    reconstruction: str = "liar"
    allocation: str = "uniform"
    target: float = 0.2
    scope: str = "decoder_linear"
    kinds: tuple = ("attention", "ffn", "ssm")
    attention_unit: str = "q_per_kv"
    channel_multiple: int = 8
    protect_first: int = 0
    protect_last: int = 0
    damping: float = 0.01
    attention: str = "heads"
    olica_k: float = 3.0
    olica_qk: str = "diag"
    lincal_layers: int = 0
    lincal_rank_ratio: float = 0.03
    lincal_damping: float = 0.05
    calib_source: str = "c4"
    calib_samples: int = 128
    calib_seq_len: int = 128
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        from .criteria import CRITERIA
        from .reconstruct import RECONSTRUCTORS
        object.__setattr__(self, "kinds", tuple(self.kinds))
        checks = [
            ("criterion", self.criterion in CRITERIA, sorted(CRITERIA)),
            ("reconstruction", self.reconstruction in RECONSTRUCTORS, sorted(RECONSTRUCTORS)),
            ("allocation", self.allocation in ALLOCATIONS, ALLOCATIONS),
            ("scope", self.scope in SCOPES, SCOPES),
            ("attention_unit", self.attention_unit in ATTENTION_UNITS, ATTENTION_UNITS),
            ("attention", self.attention in ATTENTION_MODES, ATTENTION_MODES),
            ("olica_qk", self.olica_qk in ("diag", "whitened"), ("diag", "whitened")),
            ("kinds", set(self.kinds) <= set(KINDS) and bool(self.kinds), KINDS),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise RecipeError(f"recipe field {name!r}: {getattr(self, name)!r} is not one of {list(allowed)}")
        if not 0.0 <= self.target < 1.0:
            raise RecipeError(f"recipe field 'target': {self.target} must be in [0, 1)")
        if self.attention == "olica" and self.allocation != "uniform":
            raise RecipeError("recipe field 'allocation': attention 'olica' uses its own ratio split; "
                              "set allocation: uniform")
        if int(self.lincal_layers) < 0 or not 0 < float(self.lincal_rank_ratio) <= 1:
            raise RecipeError("recipe fields 'lincal_layers' must be >= 0 and 'lincal_rank_ratio' in (0, 1]")
        for name in ("channel_multiple", "calib_samples", "calib_seq_len", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise RecipeError(f"recipe field {name!r} must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        d = dict(d)
        d.pop("method", None)
        unknown = sorted(set(d) - known)
        if unknown:
            raise RecipeError(f"recipe has unknown fields {unknown}; known: {sorted(known)}")
        for f in fields(cls):  # YAML/JSON types at the boundary: a field keeps its default's type
            if f.name in d and not _type_ok(d[f.name], f.default):
                raise RecipeError(f"recipe field {f.name!r}: {d[f.name]!r} is not a {type(f.default).__name__}")
        try:
            return cls(**d)
        except (TypeError, ValueError, OverflowError) as e:
            raise RecipeError(f"recipe: {e}") from e

    @classmethod
    def from_file(cls, path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix in (".yaml", ".yml"):
                import yaml
                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as e:
            raise RecipeError(f"recipe file {path}: cannot parse ({e})") from e
        if not isinstance(d, dict):
            raise RecipeError(f"recipe file {path}: expected a mapping at the top level")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        return {"method": "structured", **d}
