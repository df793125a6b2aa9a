"""fxprune: prune language models without retraining.

Pipeline: capture (torch.export) -> analyse (depth-2 prune groups) -> passes (calibrate, score,
allocate, reconstruct) -> physical surgery -> verify -> save.
"""
from .errors import (AnalysisError, CaptureError, CheckpointError, DataError, FxPruneError,
                     ModelLoadError, PlanError, RecipeError, SurgeryError, VerificationError)

__version__ = "0.1.0"


def prune(model, recipe, calibration, engine=None):
    """The one verb: prune ``model`` in place by ``recipe`` (a ``Recipe``, a dict, or a YAML/JSON
    path) with ``calibration`` windows (token ids [n, L]); returns a ``PruneOutcome`` with the model,
    the plan (group id -> kept units) and a report."""
    from .passes.pipeline import prune_model
    from .passes.recipe import Recipe
    if isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.from_file(recipe)
    return prune_model(model, recipe, calibration, engine)

def load_pruned(path, dtype=None):
    """Load a checkpoint written by fxprune (or ``save_pretrained``), never running code from it
    (``fxprune.trust``): per-layer structure is rebuilt with this installed fxprune."""
    from .checkpoint import load_pruned as _load_pruned
    return _load_pruned(path, dtype)


__all__ = [
    "AnalysisError", "CaptureError", "CheckpointError", "DataError", "FxPruneError", "ModelLoadError",
    "PlanError", "RecipeError", "SurgeryError", "VerificationError", "__version__", "load_pruned", "prune",
]
