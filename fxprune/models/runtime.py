"""What running a model's blocks outside its own forward needs to know, per family convention.

* ``CACHE_KWARGS``: block keyword arguments that carry a KV/SSM cache. A replayed block must not
  mutate a cache, so the block-wise runner sets them to ``None`` (and ``use_cache`` to False).
* ``has_kv_cache(model)``: whether ``model(..., use_cache=True)`` returns a reusable cache (data-free
  calibration samples with it).
* ``DERIVED_INPUTS``: modules whose weight the parent reads directly (their forward hooks never
  fire), with where their input can be observed instead: per parent class name, a list of
  ``(source submodule, target submodule, fn(parent, source_output) -> target_input)``.
"""
from __future__ import annotations

from typing import Callable

import torch

CACHE_KWARGS = ("past_key_value", "past_key_values", "cache_params", "layer_past")


#: Model types whose ``use_cache`` state is an SSM state, not a key/value cache that a continuation can extend.
STATE_CACHE_TYPES = ("mamba", "mamba2", "falcon_mamba", "jamba")


def has_kv_cache(model: torch.nn.Module) -> bool:
    """True for Hugging Face LMs whose ``use_cache=True`` returns a standard key/value cache."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "use_cache", None) is not None and getattr(cfg, "model_type", "") not in STATE_CACHE_TYPES


def _mamba_dt_input(mixer, x_proj_out):
    """HF's torch Mamba path computes ``dt_proj.weight @ x_proj(x)[..., :time_step_rank]`` inline."""
    return x_proj_out[..., : mixer.time_step_rank]


DERIVED_INPUTS: dict[str, list[tuple[str, str, Callable]]] = {
    "MambaMixer": [("x_proj", "dt_proj", _mamba_dt_input)],
}


def derived_inputs(root: torch.nn.Module) -> dict[torch.nn.Module, tuple[torch.nn.Module, Callable]]:
    """``{target module: (source module, fn(source_output) -> target input)}`` inside ``root``."""
    out = {}
    for parent in root.modules():
        for src, dst, fn in DERIVED_INPUTS.get(type(parent).__name__, []):
            s, d = getattr(parent, src, None), getattr(parent, dst, None)
            if s is not None and d is not None:
                out[d] = (s, lambda y, parent=parent, fn=fn: fn(parent, y))
    return out
