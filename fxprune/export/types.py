"""GGUF weight types fxprune writes, and the row lengths each one needs.

A GGUF tensor of a block-quantised type stores each row (the input dimension of a linear layer: the
GGUF ``ne[0]``) in blocks, so a row's length must be a multiple of the block size: 32 for
``q8_0``/``q4_0``, 256 for the K-quants. llama.cpp's own quantiser silently keeps another type when
it is not; fxprune instead pads FFN widths with zero channels (exact) or stores that one tensor as
``f16`` and says so. ``deploy_channel_multiple`` gives the pruning side the multiple to round kept
widths to, so nothing needs padding at export time.

Only pure data and arithmetic here: no gguf import, so recipes and dry runs can use it cheaply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ExportError


@dataclass(frozen=True)
class GGUFType:
    """One weight type: its name, the ggml type name, the row multiple and the bytes per weight."""

    name: str
    ggml: str            # gguf.GGMLQuantizationType member name
    row_multiple: int    # a row's length must be a multiple of this
    bytes_per_weight: float
    file_type: str       # gguf.LlamaFileType member name (general.file_type)


TYPES = {t.name: t for t in (
    GGUFType("f32", "F32", 1, 4.0, "ALL_F32"),
    GGUFType("f16", "F16", 1, 2.0, "MOSTLY_F16"),
    GGUFType("q8_0", "Q8_0", 32, 34 / 32, "MOSTLY_Q8_0"),
    GGUFType("q4_0", "Q4_0", 32, 18 / 32, "MOSTLY_Q4_0"),
)}

# Row multiples of types fxprune does not write but a user may deploy after llama.cpp's quantiser
# (``llama-quantize``): the K-quants use super-blocks of 256.
FOREIGN_ROW_MULTIPLES = {"q4_1": 32, "q5_0": 32, "q5_1": 32, "iq4_nl": 32,
                         "q2_k": 256, "q3_k": 256, "q4_k": 256, "q5_k": 256, "q6_k": 256,
                         "q4_k_m": 256, "q4_k_s": 256, "q5_k_m": 256, "q5_k_s": 256, "q3_k_m": 256}


def gguf_type(name: str) -> GGUFType:
    """The ``GGUFType`` fxprune writes for ``name`` (``f32``, ``f16``, ``q8_0``, ``q4_0``)."""
    key = name.lower()
    if key not in TYPES:
        raise ExportError(f"GGUF type {name!r} is not one fxprune writes; choose one of {sorted(TYPES)}")
    return TYPES[key]


def row_multiple(name: str) -> int:
    """The multiple a row length must have for GGUF type ``name`` (also the K-quants, e.g. ``q4_k_m``)."""
    key = name.lower()
    if key in TYPES:
        return TYPES[key].row_multiple
    if key in FOREIGN_ROW_MULTIPLES:
        return FOREIGN_ROW_MULTIPLES[key]
    raise ExportError(f"unknown GGUF type {name!r}; known: {sorted(TYPES) + sorted(FOREIGN_ROW_MULTIPLES)}")


def deploy_channel_multiple(dtype: str, channel_multiple: int = 1) -> int:
    """The channel multiple a pruning recipe should round FFN widths to when the result is deployed
    as GGUF ``dtype``: the least common multiple of ``channel_multiple`` and the type's row multiple
    (the FFN width is the row length of ``ffn_down``)."""
    return math.lcm(int(channel_multiple), row_multiple(dtype))


def head_multiple(dtype: str, head_dim: int) -> int:
    """How many q heads must come together for ``attn_output`` rows (``heads * head_dim`` long) to suit
    ``dtype``: 1 whenever ``head_dim`` is already a multiple of the row multiple (e.g. 64 for q4_0)."""
    m = row_multiple(dtype)
    return m // math.gcd(m, int(head_dim))


def padded(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple``."""
    return -(-int(width) // multiple) * multiple


def rounded_for(step, dtype: str):
    """The structured step ``step`` with ``channel_multiple`` set to ``deploy_channel_multiple(dtype,
    step.channel_multiple)``: kept widths that GGUF ``dtype`` stores without padding."""
    from dataclasses import replace
    return replace(step, channel_multiple=deploy_channel_multiple(dtype, step.channel_multiple))


def for_deployment(recipe, dtype: str):
    """``recipe`` (a ``fxprune.recipe.Recipe``) with every structured step ``rounded_for(dtype)``, and
    that multiple: what ``fxprune prune --deploy-dtype`` runs. A recipe with no structured step is
    returned unchanged (multiple None): sparsity keeps every width."""
    from dataclasses import replace

    from ..steps.structured import StructuredStep
    row_multiple(dtype)  # an unknown type is an ExportError before any work
    steps, multiple = [], None
    for s in recipe.steps:
        if isinstance(s, StructuredStep):
            s = rounded_for(s, dtype)
            multiple = s.channel_multiple
        steps.append(s)
    return replace(recipe, steps=tuple(steps)), multiple
