"""Unstructured and N:M sparsity without retraining: magnitude, Wanda, SparseGPT and the optimal
multiple-removal method (Zhao et al., EMNLP 2024 Findings), behind one recipe interface.

Entry points: ``load_recipe(path_or_name)`` and ``run_sparsity_recipe(model, recipe, calib_batches)``.
"""
