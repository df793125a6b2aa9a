"""Token-level perplexity over fixed windows: ``exp(Σ NLL / number of predicted tokens)``.

Each window of L tokens predicts L−1 tokens (positions 1…L−1 from their prefixes inside the window;
windows do not see each other). Padding (``attention_mask == 0``) is neither predicted nor counted.
NLL is summed in float64; sums and counts are additive, so data-parallel ranks each score their
shard and the engine all-reduces ``(nll, tokens)``.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PerplexityResult:
    nll: float      # Σ of token negative log-likelihoods (nats)
    tokens: int     # number of predicted tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens)


def keeps_logits(model: torch.nn.Module) -> bool:
    """True if ``model.forward`` takes ``logits_to_keep`` (Hugging Face causal LMs): the LM head can then
    run on chosen positions only."""
    import inspect
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def logits_of(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              positions: torch.Tensor | None = None, **extra) -> torch.Tensor:
    """Logits ``[b, L, V]``; with ``positions`` (1-D, sorted sequence indices) and a model that
    ``keeps_logits``, only those positions' logits ``[b, len(positions), V]`` (the LM head runs on them
    alone: the same values, less work). Without ``keeps_logits`` the positions are selected afterwards.
    ``extra`` keyword arguments (e.g. ``position_ids``) go to the model unchanged."""
    kw = {"input_ids": ids, **extra}
    if positions is not None and keeps_logits(model):
        kw["logits_to_keep"] = positions.to(ids.device)
        positions = None
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kw["use_cache"] = False
    out = model(**kw)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits if positions is None else logits[:, positions.to(logits.device)]


@torch.no_grad()
def window_nll(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ NLL as float64, number of predicted tokens) for a batch of windows ``ids`` [b, L]."""
    logits = logits_of(model, ids, attention_mask)[:, :-1]
    target = ids[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none")
    nll = nll.view(target.shape)
    if attention_mask is not None:
        m = (attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()).to(nll.device)
        return nll[m].double().sum(), m.sum()
    return nll.double().sum(), torch.tensor(target.numel())


def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
               autocast: Callable[[], ContextManager] = nullcontext, device: torch.device | str | None = None,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` over ``windows`` [n, L] (this rank's shard; ``reduce`` sums across ranks)."""
    from tqdm.auto import tqdm
    device = device or next(model.parameters()).device
    nll = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for i in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", leave=False, disable=not progress):
        with autocast():
            s, c = window_nll(model, windows[i:i + batch_size].to(device))
        nll += s.to(device)
        count += c.to(device)
    if reduce is not None:
        nll, count = reduce(nll), reduce(count)
    return PerplexityResult(float(nll), int(round(float(count))))
