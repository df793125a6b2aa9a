"""``fxprune sparsify MODEL --recipe R --out DIR``: the prune command under the name sparsity users
look for (``mrp-2of4``, ``sparsegpt-50``...). Same arguments, same single recipe format and runner.
"""
from __future__ import annotations

from . import prune as _prune

NAME = "sparsify"
HELP = "Unstructured or N:M sparsity (magnitude, Wanda, SparseGPT, multiple-removal): `prune` by another name."

add_arguments = _prune.add_arguments
run = _prune.run
