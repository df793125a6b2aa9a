"""The run report: what a prune did, as plain JSON-able data, and a readable per-layer table.

``run_report(...)`` is what ``fxprune.prune`` returns as ``PruneOutcome.report`` and what the prune
command writes as ``fxprune_report.json`` beside the checkpoint::

    {"recipe": {...}, "calibration": {...}, "params_before": int, "params_after": int, "seconds": float,
     "steps": [{"kind": str, "passes": [{"name", "seconds", ...pass report}],
                "layers": [LayerReport as dict, ...]   # sparsity steps
               }, ...]}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LayerReport:
    """One sparsified layer. ``pattern`` is the label applied (``50%``, ``2:4``) or ``skipped: why``;
    ``output_error`` is the mean over calibration tokens of ``||(W - W_new) x||^2`` (``None`` without
    calibration)."""

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

    def to_dict(self) -> dict:
        return dict(asdict(self), shape=list(self.shape), sparsity=self.sparsity)


def sparsity_totals(layers) -> dict:
    """Zeros over the parameters of the selected block linears (not embeddings or the head)."""
    zeros = sum(l.zeros for l in layers)
    numel = sum(l.numel for l in layers)
    return {"zeros": zeros, "numel": numel, "sparsity_selected_linears": zeros / max(numel, 1),
            "skipped": [l.name for l in layers if l.pattern.startswith("skipped")]}


def layers_markdown(layers) -> str:
    """A markdown table of ``LayerReport`` objects (or their dicts) with the total."""
    rows = ["| layer | shape | pattern | sparsity | output error | s |", "|---|---|---|---|---|---|"]
    zeros = numel = 0
    for l in layers:
        l = l.to_dict() if isinstance(l, LayerReport) else l
        err = "" if l["output_error"] is None else f"{l['output_error']:.4g}"
        rows.append(f"| {l['name']} | {l['shape'][0]}×{l['shape'][1]} | {l['pattern']} | {l['sparsity']:.2%} | "
                    f"{err} | {l['seconds']:.2f} |")
        zeros, numel = zeros + l["zeros"], numel + l["numel"]
    rows.append(f"\nTotal over the selected linears: {zeros / max(numel, 1):.2%} zeros.")
    return "\n".join(rows)


def step_report(step, results, facts) -> dict:
    """One step's entry: its kind, its passes' reports, and (sparsity) its layers."""
    out = {"kind": step.kind, "passes": [{"name": r.name, "seconds": round(r.seconds, 3), **r.report}
                                         for r in results]}
    if "sparsity_layers" in facts:
        out["layers"] = [l.to_dict() for l in facts["sparsity_layers"]]
    return out


def markdown(report: dict) -> str:
    """A short human-readable summary of a run report."""
    b, a = report["params_before"], report["params_after"]
    lines = [f"# fxprune run", "", f"parameters {b:,} -> {a:,} ({100 * (1 - a / max(b, 1)):.1f}% fewer) "
             f"in {report['seconds']} s", ""]
    for i, st in enumerate(report["steps"]):
        lines.append(f"## step {i + 1}: {st['kind']}")
        for p in st["passes"]:
            extra = {k: v for k, v in p.items() if k not in ("name", "seconds", "block_seconds") and
                     not isinstance(v, (list, dict))}
            lines.append(f"- {p['name']} ({p['seconds']} s): " + ", ".join(f"{k}={v}" for k, v in extra.items()))
        if st.get("layers"):
            lines += ["", layers_markdown(st["layers"])]
        lines.append("")
    return "\n".join(lines)


def find_pass(report: dict, name: str) -> dict:
    """The report of the first pass called ``name`` in a run report (``KeyError`` if none ran)."""
    for st in report["steps"]:
        for p in st["passes"]:
            if p["name"] == name:
                return p
    raise KeyError(f"no pass {name!r} in the run report")
