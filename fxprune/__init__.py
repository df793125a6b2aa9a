"""fxprune: prune language models without retraining.

Pipeline: capture (torch.export) -> analyse (depth-2 prune groups) -> recipe steps (planning passes,
then block-wise passes: calibrate, score, allocate, reconstruct) -> physical surgery -> verify -> save.

The verbs: ``load``, ``prune``, ``sparsify``, ``plan``, ``evaluate``, ``save``, ``load_pruned``,
``export`` (GGUF for llama.cpp: the ``fxprune.export`` package, callable); recipes: ``load_recipe``.
"""
from . import export
from .api import evaluate, load, load_pruned, plan, prune, save, sparsify
from .errors import (AnalysisError, CaptureError, CheckpointError, DataError, FxPruneError,
                     ModelLoadError, PlanError, RecipeError, SurgeryError, VerificationError)
from .recipe import Recipe, load_recipe

__version__ = "0.1.0"

__all__ = [
    "AnalysisError", "CaptureError", "CheckpointError", "DataError", "FxPruneError", "ModelLoadError",
    "PlanError", "Recipe", "RecipeError", "SurgeryError", "VerificationError", "__version__", "evaluate", "export", "load",
    "load_pruned", "load_recipe", "plan", "prune", "save", "sparsify",
]
