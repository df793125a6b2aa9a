"""Typed, frozen configs for sparsification: the target pattern and one config class per method.

Strings exist only in recipe files; ``fxprune.sparsity.recipe`` parses them once into these types.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

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


# ---- method configs (one per registered method) ----

@dataclass(frozen=True)
class MagnitudeConfig:
    """Keep the largest ``|W|`` (per layer for unstructured ``granularity='layer'``, else per row / group)."""

    needs_calibration = False


@dataclass(frozen=True)
class WandaConfig:
    """Wanda (Sun et al. 2023): score ``|W_ij| · ||X_j||₂``, compared within each output row; no update."""

    needs_calibration = True


@dataclass(frozen=True)
class SparseGPTConfig:
    """SparseGPT (Frantar & Alistarh 2023), as IST-DASLab's ``fasterprune``: single-removal OBS updates
    column by column, lazy blocks of ``blocksize`` columns, masks chosen per block (adaptive)."""

    blocksize: int = 128
    percdamp: float = 0.01
    needs_calibration = True


@dataclass(frozen=True)
class MRPConfig:
    """Multiple-removal pruning (Zhao et al., EMNLP 2024 Findings).

    Mask selection (``mask_selection``):
      * ``"adaptive"`` (default): a left-to-right sweep over lazy column blocks of ``blocksize``; in
        each group of M columns (N:M) every one of the C(M,N) patterns is scored by its
        multiple-removal loss ``½ w_P [(H_c⁻¹)_PP]⁻¹ w_Pᵀ`` under the conditional inverse Hessian of
        the not-yet-frozen columns, the cheapest is kept and removed jointly (unstructured: the
        saliency ``w_j² / [H_c⁻¹]_jj`` picks the block's zeros);
      * ``"oneshot"``: same scores from the full ``H⁻¹`` and the original weights, no sweep.
    Update: after the mask is fixed every row is re-solved exactly, ``w_R = (H_RR)⁻¹ (H wᵀ)_R``
    (or the equivalent ``δw = −w_P [(H⁻¹)_PP]⁻¹ (H⁻¹)_{P,:}`` when ``|P| < |R|``), batched over
    chunks of rows sorted by kept count and padded with identity to the chunk's largest count;
    ``row_chunk`` bounds memory (``row_chunk · k²`` floats).
    ``update="sweep"`` skips the exact final solve and keeps the sweep's weights (joint removal per
    group/block with the columns to its left frozen): about SparseGPT's cost, not the exact optimum.
    """

    blocksize: int = 128
    percdamp: float = 0.01
    mask_selection: Literal["adaptive", "oneshot"] = "adaptive"
    row_chunk: int = 64
    solve_dtype: Literal["float32", "float64"] = "float32"
    update: Literal["exact", "sweep"] = "exact"
    needs_calibration = True

    def __post_init__(self):
        if self.update not in ("exact", "sweep"):
            raise RecipeError(f"options.update must be 'exact' or 'sweep', got {self.update!r}")
        if self.mask_selection not in ("adaptive", "oneshot"):
            raise RecipeError(f"options.mask_selection must be 'adaptive' or 'oneshot', got {self.mask_selection!r}")


MethodConfig = MagnitudeConfig | WandaConfig | SparseGPTConfig | MRPConfig


@dataclass(frozen=True)
class SparsityRecipe:
    """A whole sparsification recipe: method config, pattern, layer selection, calibration size."""

    method: MethodConfig
    pattern: Pattern
    layers: LayerSelection = field(default_factory=LayerSelection)
    calib_samples: int = 128
    calib_seqlen: int = 512
    name: str = ""
