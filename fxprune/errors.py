"""Typed errors. Every error names the thing at fault (model class, module path, op, group id or file)."""
from __future__ import annotations


class FxPruneError(Exception):
    """Base class of all fxprune errors."""


class ModelLoadError(FxPruneError):
    """A model path/spec could not be read. ``path`` names the file or directory at fault."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(f"cannot load model from {path!r}: {reason}")


class CaptureError(FxPruneError):
    """``torch.export`` failed on a model. Carries the model class and the underlying exception."""

    def __init__(self, model_class: str, cause: BaseException):
        self.model_class = model_class
        self.cause = cause
        super().__init__(f"torch.export could not capture {model_class}: {type(cause).__name__}: {cause}")


class AnalysisError(FxPruneError):
    """The dependency analysis met something it cannot reason about (names the op and module)."""


class PlanError(FxPruneError):
    """A prune plan is invalid for a group. ``group_id`` names the group at fault."""

    def __init__(self, group_id: str, reason: str):
        self.group_id = group_id
        super().__init__(f"invalid plan for group {group_id!r}: {reason}")


class SurgeryError(FxPruneError):
    """Physical pruning could not be applied to a module (names the module path)."""


class VerificationError(FxPruneError):
    """Re-capturing a pruned model did not show the expected group sizes."""


class CheckpointError(FxPruneError):
    """Saving or loading a pruned checkpoint failed (names the directory or file)."""


class DataError(FxPruneError):
    """Calibration/evaluation data is missing, unreadable or overlapping (names the file)."""


class RecipeError(FxPruneError):
    """A recipe is malformed (names the field)."""


class OutputError(CheckpointError):
    """An output path fxprune may not or cannot write (names the path and what is in the way)."""


class ResourceError(FxPruneError):
    """The job would not fit in the memory or disk space available (says what would fit)."""


class ArgumentError(FxPruneError):
    """A command-line argument is invalid (names the argument)."""


class ExportError(FxPruneError):
    """A model cannot be written to a deployment format (names the module, tensor or file at fault)."""


class UnsupportedFamilyError(ExportError):
    """The export target has no architecture for this model family. ``family`` names it."""

    def __init__(self, family: str, reason: str):
        self.family = family
        super().__init__(f"cannot export model family {family!r}: {reason}")


class UnsupportedModuleError(ExportError):
    """A module has no exact equivalent in the export target. ``module`` is its path."""

    def __init__(self, module: str, kind: str, reason: str):
        self.module = module
        self.kind = kind
        super().__init__(f"cannot export {kind} at {module!r}: {reason}")


class EngineError(FxPruneError):
    """An inference engine (llama.cpp) is missing or failed on a file (names the engine and file)."""
