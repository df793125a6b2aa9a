"""Unstructured and N:M sparsity without retraining: the targets (``config``: ``Unstructured``, ``NM``,
``LayerSelection``), mask helpers (``masks``) and the methods' kernels (``methods``: magnitude,
Wanda, SparseGPT and the optimal multiple-removal method of Zhao et al., EMNLP 2024 Findings).

They run as recipe steps (``fxprune.steps.sparsity``) through the one block-wise runner:
``fxprune.sparsify(model, "mrp", "2:4")`` or a recipe ``{steps: [{mrp: {sparsity: "2:4"}}]}``.
"""
from .config import NM, LayerSelection, Unstructured, parse_pattern
from .export import convert_2to4_and_time, save_sparse_model
from .methods import (METHOD_NAMES, LayerStats, MagnitudeConfig, MRPConfig, SparseGPTConfig, WandaConfig,
                      prune_weight)

__all__ = ["METHOD_NAMES", "NM", "LayerSelection", "LayerStats", "MRPConfig", "MagnitudeConfig", "SparseGPTConfig",
           "Unstructured", "WandaConfig", "convert_2to4_and_time", "parse_pattern", "prune_weight",
           "save_sparse_model"]
