"""PNG plots (matplotlib, headless: ``Figure`` + the Agg canvas, no pyplot state, no display needed).

* ``plot_sweep``: a metric (perplexity, zero-shot average) against the fraction of parameters removed,
  one line per recipe, the dense model marked (star at 0 and a dotted reference line).
* ``plot_widths``: kept width of every layer, one panel per group kind, dense width as an outline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_sweep(rows: Sequence[dict], path, *, metric: str, label: str, dense: float | None = None,
               log_y: bool = False, title: str = "") -> Path:
    """``rows``: dicts with ``recipe``, ``removed`` (fraction of parameters) and ``metric``; rows whose
    metric is missing are skipped."""
    fig, axes = _figure(6.4, 4.2)
    ax = axes[0][0]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    for name in recipes:
        pts = sorted((r["removed"], r[metric]) for r in rows if r["recipe"] == name and r.get(metric) is not None)
        if dense is not None:
            pts = [(0.0, dense)] + pts
        if pts:
            ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    if dense is not None:
        ax.axhline(dense, color="gray", linestyle=":", linewidth=1)
        ax.plot([0], [dense], marker="*", markersize=14, color="black", linestyle="none", label="dense")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("parameters removed (% of all parameters)")
    ax.set_ylabel(label)
    ax.set_title(title or f"{label} vs parameters removed")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_widths(kept: Sequence[dict], path, *, dense: Sequence[dict] | None = None, title: str = "") -> Path:
    """``kept`` / ``dense``: rows of ``widths.widths_table`` (``layer``, ``kind``, ``width``)."""
    kinds = list(dict.fromkeys(r["kind"] for r in kept))
    fig, axes = _figure(7.0, 2.2 * max(len(kinds), 1) + 0.6, nrows=max(len(kinds), 1))
    ref = {(r["layer"], r["kind"]): r["width"] for r in (dense or [])}
    for ax, kind in zip([a[0] for a in axes], kinds):
        rows = sorted((r for r in kept if r["kind"] == kind), key=lambda r: r["layer"])
        layers = [r["layer"] for r in rows]
        ax.bar(layers, [r["width"] for r in rows], color="tab:blue", label="kept")
        d = [ref.get((r["layer"], kind)) for r in rows]
        if any(v is not None for v in d):
            ax.bar(layers, [v or 0 for v in d], fill=False, edgecolor="black", linewidth=0.6, label="dense")
        ax.set_ylabel(f"{kind} width")
        ax.set_xlabel("layer")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_title(title or "kept width per layer")
    return _save(fig, path)
