"""Evaluation: token-level perplexity and zero-shot multiple-choice accuracy (lm-eval protocol)."""
