"""fxprune: prune language models without retraining.

Pipeline: capture (torch.export) -> analyse (depth-2 prune groups) -> passes (calibrate, score,
allocate, reconstruct) -> physical surgery -> verify -> save.
"""
from .errors import (AnalysisError, CaptureError, CheckpointError, DataError, FxPruneError,
                     ModelLoadError, PlanError, RecipeError, SurgeryError, VerificationError)

__version__ = "0.1.0"

__all__ = [
    "AnalysisError", "CaptureError", "CheckpointError", "DataError", "FxPruneError", "ModelLoadError",
    "PlanError", "RecipeError", "SurgeryError", "VerificationError", "__version__",
]
