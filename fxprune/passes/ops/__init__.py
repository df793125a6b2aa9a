"""Block ops: the work methods do on one block, driven by the one block-wise runner
(``fxprune.calibration.runner``). One small file per kind of work; a step composes them in order
(e.g. Olica attention -> capture refit targets -> remove units -> GOA refit -> linear-calibration fit).

Ops of one block share ``ctx.scratch``: ``"removed"`` (the consumer layers and keep masks that
``RemoveUnits`` folded and sliced) and captures taken before the block changed.
"""
from .capture import capture_io
from .olica_attention import OlicaAttention
from .refit import BlockRefit, CaptureRefitTargets, CaptureStreamTargets, Refit
from .remove_units import RemoveUnits
from .lincal import CaptureForLinCal, FitLinCal
from .scores import ScoreBlocks
from .sparsify import Sparsify

__all__ = ["BlockRefit", "CaptureForLinCal", "CaptureRefitTargets", "CaptureStreamTargets", "FitLinCal", "OlicaAttention", "Refit",
           "RemoveUnits", "ScoreBlocks", "Sparsify", "capture_io"]
