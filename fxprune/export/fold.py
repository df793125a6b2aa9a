"""Fold fxprune's own modules back into plain dense weights, exactly, and say what that costs.

Deployment formats only know ``y = W x + b``. fxprune's modules (``fxprune/structure.py``) become:

* ``nn.Linear``: itself (a sparse layer keeps its zeros);
* ``LowRankLinear`` (``up(down(x))``): ``W = W_up W_down``, the rank-r product; exact, but the
  layer has ``out*in`` weights again instead of ``r*(out+in)``;
* ``PaddedOutLinear`` (value projection narrower than its heads): zero rows restore every KV head
  to ``head_dim`` channels; exact (the PyTorch module pads its output with the same zeros);
* ``SlicedInLinear`` (output projection reading the kept value channels): zero columns for the
  padded channels; exact.

Each fold returns a ``Folded`` record with the dense tensors and, when the deployed layer is larger
than the pruned one, a one-line note of the extra parameters. The linear calibration beside an FFN
is folded by the family writer (it becomes extra FFN channels; see ``llama_family``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModuleError
from ..structure import LowRankLinear, PaddedOutLinear, SlicedInLinear


@dataclass
class Folded:
    """Dense ``weight`` [out, in] and ``bias`` [out] (or None) of a linear module, float32 on the CPU."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    note: str = ""


def _f32(t):
    return None if t is None else t.detach().to(device="cpu", dtype=torch.float32).clone()


def _pad_blocks(t: torch.Tensor, groups: int, head_dim: int, dim: int) -> torch.Tensor:
    """Split ``t`` along ``dim`` into ``groups`` blocks and zero-pad each block to ``head_dim``."""
    width = t.shape[dim] // groups
    t = t.movedim(dim, 0)
    blocks = t.reshape(groups, width, *t.shape[1:])
    out = t.new_zeros(groups, head_dim, *t.shape[1:])
    out[:, :width] = blocks
    return out.reshape(groups * head_dim, *t.shape[1:]).movedim(0, dim)


@torch.no_grad()
def dense_linear(module: nn.Module, path: str) -> Folded:
    """The dense weight and bias that compute exactly what ``module`` (at ``path``) computes."""
    if isinstance(module, LowRankLinear):
        w = _f32(module.up.weight).double() @ _f32(module.down.weight).double()
        extra = module.out_features * module.in_features - module.rank * (module.out_features + module.in_features)
        return Folded(w.float(), _f32(module.up.bias),
                      f"{path}: low-rank (rank {module.rank}) folded to a dense {module.out_features}x"
                      f"{module.in_features} layer: {extra:+,} weights")
    if isinstance(module, PaddedOutLinear):
        w = _pad_blocks(_f32(module.weight), module.groups, module.head_dim, 0)
        b = None if module.bias is None else _pad_blocks(_f32(module.bias), module.groups, module.head_dim, 0)
        extra = w.numel() - module.weight.numel()
        return Folded(w, b, f"{path}: value heads of {module.out_features // module.groups} channels padded with "
                            f"zero rows to head_dim {module.head_dim}: {extra:+,} weights (all zero)")
    if isinstance(module, SlicedInLinear):
        w = _pad_blocks(_f32(module.weight), module.groups, module.head_dim, 1)
        extra = w.numel() - module.weight.numel()
        return Folded(w, _f32(module.bias), f"{path}: reads {module.in_features // module.groups} of "
                      f"{module.head_dim} channels per head; zero columns added: {extra:+,} weights (all zero)")
    if type(module) is nn.Linear:
        return Folded(_f32(module.weight), _f32(module.bias))
    raise UnsupportedModuleError(path, type(module).__name__,
                                 "no exact dense equivalent is known (expected nn.Linear or an fxprune module)")
