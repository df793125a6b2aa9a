"""LIAR, then an error-correcting refit of each consumer against the dense *block's* output.

Step 1 folds the removed units into the kept ones exactly as LIAR (``liar.py``). Step 2 (after removal,
on the pruned stream) refits each consumer whose output is added straight into the block's output and
nowhere else (the last residual branch of a pre-norm block: ``down_proj``; an ``o_proj`` whose output
also feeds the FFN after it is not one, a parallel block's is), so that the block's output moves
towards the dense model's: with ``X``, ``Y`` the consumer's input and output on the pruned stream and ``E`` the
block's output error (dense block on dense inputs minus pruned block on pruned inputs),
``[W' b'] = argmin ||[X 1] [W' b']^T - (Y + E)||^2 + lambda ||W' - W||^2``. The target carries the error
the earlier blocks left in the residual stream, not only this block's: later blocks correct what the
earlier ones could not. GOA's step 2 (``goa.py``) instead matches the consumer's own dense output.

A consumer whose output is not added unchanged to the block's output (a norm after it, as in Gemma's
post-FFN norm, or a later branch that reads it) cannot take ``Y + E`` as its target; the refit op
checks that with a probe perturbation and leaves such a consumer at step 1 (reported as ``skipped``).

The ridge (``refit_damping``, ``lambda = alpha * mean(diag(X^T X))``) decides how far the refit moves
from step 1. On SmolLM2 (``bench/results/quality7_block.md``) a small ridge (0.01, 0.1) chases the residual
stream's error on the calibration text and loses on WikiText-2; ``refit_damping: 1.0`` gains 1.9% at
L=512 over LIAR. Refitting towards each consumer's own dense output instead (``goa``) with the same
ridge loses: the gain comes from correcting what earlier blocks left, not from refitting as such.

The refit wants calibration documents (``bench/results/quality8_calib.md``): at 20% on SmolLM2, 512 C4
windows of 128 tokens instead of 128 take L=512 perplexity from 1.50x to 1.42x dense, where LIAR alone
gained under 1% from doubling them. Refitting more layers (``refit_scope: stream`` / ``all``: the
o_proj toward the dense stream after attention, the stream's readers toward their dense outputs) did
not pay; the options stay for other architectures and are tested.
"""
from . import register
from .liar import Liar


@register
class LiarBlockRefit(Liar):
    name = "liar_block"  # needs: LIAR's (INPUT_GRAM, INPUT_SUM), inherited
    refits = True
    refit_target = "block"
    default_refit_damping = 1.0  # the step's ``refit_damping`` when it gives none (module docstring)
