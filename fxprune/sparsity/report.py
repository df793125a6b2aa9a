"""The result of a sparsification run: one ``LayerReport`` per linear layer, JSON and markdown views."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class LayerReport:
    """``pattern`` is the label applied (``50%``, ``2:4``) or ``skipped: why``; ``output_error`` is the
    mean over calibration tokens of ``||(W − Ŵ) x||²`` (``None`` without calibration)."""

    name: str
    shape: tuple[int, int]
    pattern: str
    zeros: int
    numel: int
    output_error: float | None
    seconds: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityResult:
    recipe: Any
    layers: list[LayerReport]
    seconds: float
    calib_tokens: int

    @property
    def total_zeros(self) -> int:
        return sum(l.zeros for l in self.layers)

    @property
    def total_numel(self) -> int:
        return sum(l.numel for l in self.layers)

    @property
    def sparsity(self) -> float:
        """Zeros over all parameters of the *selected decoder linear layers* (not embeddings/head)."""
        return self.total_zeros / max(self.total_numel, 1)

    def to_dict(self) -> dict:
        rec = self.recipe
        rec_d = _plain(rec) if is_dataclass(rec) else rec
        return {"recipe": rec_d, "seconds": self.seconds, "calib_tokens": self.calib_tokens,
                "sparsity_decoder_linears": self.sparsity, "zeros": self.total_zeros, "numel": self.total_numel,
                "layers": [dict(asdict(l), sparsity=l.sparsity) for l in self.layers]}

    def to_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def to_markdown(self) -> str:
        lines = ["| layer | shape | pattern | sparsity | output error | s |", "|---|---|---|---|---|---|"]
        for l in self.layers:
            err = "" if l.output_error is None else f"{l.output_error:.4g}"
            lines.append(f"| {l.name} | {l.shape[0]}×{l.shape[1]} | {l.pattern} | {l.sparsity:.2%} | {err} | {l.seconds:.2f} |")
        lines.append(f"\nTotal over decoder linears: {self.sparsity:.2%} zeros, {self.seconds:.1f} s, "
                     f"{self.calib_tokens} calibration tokens.")
        return "\n".join(lines)


def _plain(obj):
    if is_dataclass(obj):
        d = {"type": type(obj).__name__}
        d.update({f.name: _plain(getattr(obj, f.name)) for f in fields(obj)})
        return d
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
