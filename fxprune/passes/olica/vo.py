"""Olica's orthogonal decomposition of V/O, one rotation per KV group (GQA-safe).

For KV group ``u`` with value rows ``V_u`` (head_dim x d_in) and the output columns ``O_h``
(d_out x head_dim) of each of its q heads ``h``:
``A = [O_h^T diag(sqrt(E[y^2])) for h in group]`` (y: the output projection's output),
``A = U S W^T``; ``V_u <- U^T V_u`` (and its bias), ``O_h <- O_h U``: every ``O_h V_u`` is unchanged.
Rotated channel ``j`` is scored ``||V_u[j] * sqrt(E[x^2])|| + sum_h ||O_h[:, j]|| sqrt(E[z_{h,j}^2])``
(x: the value input, z: the rotated attention output), and ``U``'s columns are ordered best first, so
keeping the first ``r`` units of the ``attn_v_channels`` group keeps every KV group's best ``r``.
"""
from __future__ import annotations

import torch

from .attention import AttentionParts


@torch.no_grad()
def rotate_vo(model, part: AttentionParts, stats, order_by_score: bool = True) -> torch.Tensor:
    """Rotate V/O of ``part`` in place (function-preserving); returns the per-KV-group channel scores
    in the new (sorted) basis, shape [kv groups, head_dim]."""
    hd = part.head_dim
    Wv_p = model.get_parameter(part.v_weight)
    Wo_p = model.get_parameter(part.o_weight)
    bv_p = model.get_parameter(part.v_bias) if part.v_bias else None
    Wv, Wo = Wv_p.detach().double(), Wo_p.detach().double()
    so, sv = stats[part.o_module], stats[part.v_module]
    y_rms = so.output_second_moment.double().clamp_min(0).sqrt()
    x_rms = sv.second_moment.double().clamp_min(0).sqrt()
    G = so.gram.double() / so.count
    n_kv = int(part.v_kv.max()) + 1
    scores = torch.zeros(n_kv, hd, dtype=torch.float64)
    for u in range(n_kv):
        rows = torch.nonzero(part.v_kv == u).flatten()
        cols = torch.nonzero(part.o_kv == u).flatten().view(-1, hd)  # one row of columns per q head
        A = torch.cat([Wo[:, c].T * y_rms[None, :] for c in cols], dim=1)
        U = torch.linalg.svd(A, full_matrices=False)[0]
        s = (U.T @ Wv[rows] * x_rms[None, :]).norm(dim=1)
        for c in cols:
            z2 = torch.diagonal(U.T @ G[c][:, c] @ U).clamp_min(0)
            s = s + (Wo[:, c] @ U).norm(dim=0) * z2.sqrt()
        if order_by_score:
            order = torch.argsort(s, descending=True, stable=True)
            U, s = U[:, order], s[order]
        scores[u] = s
        Wv[rows] = U.T @ Wv[rows]
        for c in cols:
            Wo[:, c] = Wo[:, c] @ U
        if bv_p is not None:
            bv_p[rows] = (U.T @ bv_p[rows].double()).to(bv_p.dtype)
    Wv_p.copy_(Wv.to(Wv_p.dtype))
    Wo_p.copy_(Wo.to(Wo_p.dtype))
    return scores
