"""Argument types for the CLI: a bad value is refused by argparse as one typed line (exit code 2)."""
from __future__ import annotations

import argparse


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def seq_len(text: str) -> int:
    """A window length in tokens: an integer >= 2 (one prediction needs two tokens)."""
    v = _int(text)
    if v < 2:
        raise argparse.ArgumentTypeError(f"{v} must be >= 2 tokens")
    return v


def non_negative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "64", "32", "16", "bf16")


def devices(text: str):
    """``auto`` or a number of devices >= 1."""
    if text == "auto":
        return text
    return positive_int(text)
