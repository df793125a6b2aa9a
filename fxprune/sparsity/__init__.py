"""Unstructured and N:M sparsity without retraining: magnitude, Wanda, SparseGPT and the optimal
multiple-removal method (Zhao et al., EMNLP 2024 Findings), behind one recipe interface.

Entry points: ``load_recipe(path_or_name)`` and ``run_sparsity_recipe(model, recipe, calib_batches)``.
"""
from .config import (NM, LayerSelection, MagnitudeConfig, MRPConfig, SparseGPTConfig, SparsityRecipe,  # noqa: E402
                     Unstructured, WandaConfig)
from .driver import SparsityError, run_sparsity_recipe  # noqa: E402
from .export import convert_2to4_and_time, save_sparse_model  # noqa: E402
from .recipe import builtin_recipes, load_recipe, parse_recipe  # noqa: E402
from .report import LayerReport, SparsityResult  # noqa: E402

__all__ = ["NM", "Unstructured", "LayerSelection", "MagnitudeConfig", "WandaConfig", "SparseGPTConfig", "MRPConfig",
           "SparsityRecipe", "SparsityError", "run_sparsity_recipe", "save_sparse_model", "convert_2to4_and_time",
           "load_recipe", "parse_recipe", "builtin_recipes", "LayerReport", "SparsityResult"]
