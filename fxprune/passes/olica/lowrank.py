"""Activation-weighted low-rank factorisation of a linear layer (Olica's Q/K).

``W D ~ U_r S_r V_r^T`` with ``D = diag(sqrt(E[x^2]))``; the layer becomes
``LowRankLinear``: ``down = V_r^T D^-1`` (rank x in), ``up = U_r S_r`` (out x rank, the old bias).
The output width is unchanged, so RoPE and the head layout are untouched. At rank
``min(in, out)`` the factorisation reproduces the layer (up to float error).

``whitened`` (fxprune's option, as in SVD-LLM): with the input Gram ``G = L L^T`` (damped), the SVD of
``W L`` gives the rank-r layer closest to ``W`` in *output* error on the calibration data
(``down = V_r^T L^-1``), where the diagonal weighting only approximates it.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import SurgeryError
from ...structure import LowRankLinear


def saving_rank(in_features: int, out_features: int, ratio: float) -> int | None:
    """The rank that removes ``ratio`` of the layer's weights, or None if factorising saves nothing."""
    r = int((1.0 - ratio) * in_features * out_features / (in_features + out_features))
    if r < 1 or r * (in_features + out_features) >= in_features * out_features:
        return None
    return r


@torch.no_grad()
def factorise(model: nn.Module, module_path: str, rank: int, second_moment: torch.Tensor | None = None,
              gram: torch.Tensor | None = None, damping: float = 0.01) -> LowRankLinear:
    """Replace the ``nn.Linear`` at ``module_path`` by a rank-``rank`` ``LowRankLinear`` (in place):
    weighted by ``diag(sqrt(second_moment))`` or, given ``gram`` (the input Gram), whitened by it."""
    parent_name, _, attr = module_path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    lin = getattr(parent, attr)
    if type(lin) is not nn.Linear:
        raise SurgeryError(f"{module_path}: low-rank factorisation needs an nn.Linear, got {type(lin).__name__}")
    W = lin.weight.detach().double()
    out_f, in_f = W.shape
    if not 1 <= rank <= min(in_f, out_f):
        raise SurgeryError(f"{module_path}: rank {rank} outside [1, {min(in_f, out_f)}]")
    if gram is not None:
        G = gram.double()
        G = G + damping * float(torch.diagonal(G).mean().clamp_min(1e-12)) * torch.eye(in_f, dtype=G.dtype)
        L = torch.linalg.cholesky(G)
        U, S, Vh = torch.linalg.svd(W @ L, full_matrices=False)
        down = torch.linalg.solve_triangular(L, Vh[:rank], upper=False, left=False)  # Vh_r L^-1
    else:
        d = torch.ones(in_f, dtype=torch.float64) if second_moment is None else second_moment.double().clamp_min(0).sqrt()
        d = d.clamp_min(max(float(d.mean()) * 1e-6, 1e-12))
        U, S, Vh = torch.linalg.svd(W * d[None, :], full_matrices=False)
        down = Vh[:rank] / d[None, :]
    new = LowRankLinear(in_f, rank, out_f, bias=lin.bias is not None).to(device=lin.weight.device, dtype=lin.weight.dtype)
    new.down.weight.copy_(down.to(new.down.weight.dtype))
    new.up.weight.copy_((U[:, :rank] * S[:rank][None, :]).to(new.up.weight.dtype))
    if lin.bias is not None:
        new.up.bias.copy_(lin.bias)
    new.train(lin.training)
    setattr(parent, attr, new)
    return new
