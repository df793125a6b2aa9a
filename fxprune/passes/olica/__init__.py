"""Olica (He & Lin, ICML 2025) as passes on fxprune's groups, for any family the analyser supports.

* ``attention``: finds each attention's value/output projections, its q/k producers and the KV group
  of every value row and output column from the analysis (GQA-safe: one rotation per KV group);
* ``vo``: the function-preserving orthogonal decomposition of V/O and the removal of rotated value
  channels by the activation-weighted score;
* ``lowrank``: activation-weighted SVD factorisation of q/k projections into ``LowRankLinear``;
* ``lincal``: the linear calibration of a pruned FFN (ridge fit of its residual, fit-quality column
  weights, rank-k truncation, inserted beside the FFN);
* ``split``: the paper's ratio split between Q/K, V/O and FFN, solved exactly with the cost model.
"""
