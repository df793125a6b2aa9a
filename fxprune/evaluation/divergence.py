"""Cross-entropy of a model against a reference model's next-token distributions (soft targets).

``reference_probs`` keeps the reference's probabilities of every predicted position (bf16, one tensor
per batch: ``windows × (L−1) × vocab × 2`` bytes); ``soft_nll`` is then the mean over predicted tokens
of ``−Σ_v p_ref(v) log q(v) = lse(z) Σ_v p_ref(v) − Σ_v p_ref(v) z_v`` (``z`` the logits), taken a few
rows at a time without materialising ``log q``. Its difference between two models is their difference in
``KL(p_ref ‖ q)`` (the reference's own entropy cancels), the second-order part of a loss change without
the first-order term that the sampled next tokens add: the same quantity with less noise on few windows.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch

from .perplexity import logits_of


@torch.no_grad()
def reference_probs(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1,
                    autocast: Callable[[], ContextManager] = nullcontext,
                    device: torch.device | str | None = None) -> list[torch.Tensor]:
    """``model``'s next-token probabilities at positions 0…L−2 of ``windows`` [n, L], bf16, one tensor
    per batch."""
    return [torch.softmax(logits.float(), -1).to(torch.bfloat16)
            for logits in _predicting_logits(model, windows, batch_size, autocast, device)]


@torch.no_grad()
def soft_nll(model: torch.nn.Module, windows: torch.Tensor, reference: list[torch.Tensor], batch_size: int = 1,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             autocast: Callable[[], ContextManager] = nullcontext,
             device: torch.device | str | None = None) -> float:
    """Mean over predicted tokens of ``−Σ_v p_ref(v) log q(v)`` (``reference`` from ``reference_probs``
    with the same ``windows`` and ``batch_size``); ``reduce`` sums across ranks."""
    device = device or next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for b, logits in enumerate(_predicting_logits(model, windows, batch_size, autocast, device)):
        ref = reference[b].to(logits.device)
        if ref.shape != logits.shape:
            raise ValueError(f"soft_nll: reference batch {b} has shape {tuple(ref.shape)}, the model's logits "
                             f"{tuple(logits.shape)} (same windows and batch_size as reference_probs?)")
        total += _soft_nll_sum(logits.reshape(-1, logits.shape[-1]), ref.reshape(-1, ref.shape[-1])).to(device)
        count += float(logits.shape[0] * logits.shape[1])
    if reduce is not None:
        total, count = reduce(total), reduce(count)
    return float(total) / max(float(count), 1.0)


def _predicting_logits(model, windows, batch_size, autocast, device):
    """Per batch of ``windows``, the logits of the positions that predict a next token (0…L−2); only the
    forward runs under ``autocast`` (the caller's use of the logits does not)."""
    device = device or next(model.parameters()).device
    for i in range(0, windows.shape[0], batch_size):
        with autocast():
            logits = logits_of(model, windows[i:i + batch_size].to(device))[:, :-1]
        yield logits


def _soft_nll_sum(z: torch.Tensor, p: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """``Σ_t −Σ_v p[t, v] log softmax(z[t])_v`` in float64, ``rows`` rows at a time (fp32 copies of a
    few rows only: the bf16 ``p`` is never expanded whole)."""
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for i in range(0, z.shape[0], rows):
        zc, pc = z[i:i + rows].float(), p[i:i + rows].float()
        pz = torch.bmm(pc.unsqueeze(1), zc.unsqueeze(2)).view(-1)
        total += (torch.logsumexp(zc, -1) * pc.sum(-1) - pz).double().sum()
    return total
