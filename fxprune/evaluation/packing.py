"""Packed shared-context scoring: one row per item, its context once and every choice after it.

An item of a multiple-choice task is several requests with the same context tokens ``c`` and
continuations ``k_1 .. k_n``. Its packed row is ``c + k_1[:-1] + k_2[:-1] + ... + k_n[:-1]``, with

- a **tree mask**: a context token attends causally to the context; a token of segment ``r``
  (``k_r[:-1]``) attends to the whole context and causally to its own segment, never to another
  segment;
- **position ids** that restart after the context for every segment (``len(c) .. len(c)+|k_r|-2``).

Every scored position then sees exactly the tokens (and positions) it sees in the request's own
sequence ``c + k_r[:-1]``: the same log-likelihoods up to float rounding, from
``len(c) + Σ(|k_r| - 1)`` tokens instead of ``n·len(c) + Σ(|k_r| - 1)``. The first token of every
continuation is scored from the context's last position, the others from their segment. Rows are
right-padded and batched up to a token budget, so matrix products stay large (unlike one cached
context forward per item).

Contract: the model takes ``position_ids`` and a custom 4-D ``attention_mask``
``[batch, 1, query, key]`` (Hugging Face decoders with ``sdpa`` or ``eager`` attention do). Models that
accept the arguments but derive positions or biases otherwise (ALiBi, positions from a 2-D mask) would
score wrongly, so ``loglikelihoods`` compares one real item against the unpacked path once per model
before packing for it, and falls back when they disagree. Local attention (sliding windows, chunks)
is not expressed by the tree mask: only groups that fit in the span are packed (``attention_window``).
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F

from .perplexity import logits_of

Group = tuple[list[int], list[list[int]]]   # (context tokens, continuations)


def accepts_packing(model: torch.nn.Module) -> bool:
    """True if ``model.forward`` takes ``position_ids`` and ``attention_mask`` and its attention is
    ``sdpa`` or ``eager`` (the implementations that apply an arbitrary 4-D mask)."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params and "attention_mask" in params


def attention_window(model: torch.nn.Module) -> int | None:
    """The shortest local attention span of the model's config (``sliding_window``,
    ``attention_chunk_size``), None when every layer attends globally. A packed row's mask is the
    global tree mask, so only groups whose every request fits in this span are packed (there the
    local layers attend to the same tokens as the global ones)."""
    cfg = getattr(model, "config", None)
    spans = [getattr(cfg, k, None) for k in ("sliding_window", "attention_chunk_size")]
    spans = [int(v) for v in spans if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(spans) if spans else None


def packed_length(group: Group) -> int:
    ctx, conts = group
    return len(ctx) + sum(len(k) - 1 for k in conts)


def _row_layout(group: Group) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """(tokens, segment id per token: 0 context, r+1 for continuation r, position ids, scored) of one
    row; ``scored[r]``: the row positions whose logits predict continuation r's tokens in order (the
    context's last position, then the segment's own)."""
    ctx, conts = group
    tokens, seg, pos, scored = list(ctx), [0] * len(ctx), list(range(len(ctx))), []
    for r, k in enumerate(conts):
        scored.append([len(ctx) - 1] + list(range(len(tokens), len(tokens) + len(k) - 1)))
        tokens += k[:-1]
        seg += [r + 1] * (len(k) - 1)
        pos += list(range(len(ctx), len(ctx) + len(k) - 1))
    return tokens, seg, pos, scored


def packed_inputs(groups: Sequence[Group], mask_dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[list[int]]]]:
    """``(input_ids [b, T], position_ids [b, T], mask [b, 1, T, T], scored)`` for a batch of groups.

    ``mask`` is boolean (True: attend), or additive (0 / dtype minimum) when ``mask_dtype`` is given.
    ``scored[b][r]`` lists the row positions whose logits predict continuation ``r``'s tokens in order.
    Padding tokens attend to themselves (no fully masked row) and are never scored."""
    rows = [_row_layout(g) for g in groups]
    T = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    seg = torch.full((len(rows), T), -1, dtype=torch.long)
    pos = torch.zeros(len(rows), T, dtype=torch.long)
    for b, (tokens, s, p, _) in enumerate(rows):
        ids[b, :len(tokens)] = torch.tensor(tokens)
        seg[b, :len(tokens)] = torch.tensor(s)
        pos[b, :len(tokens)] = torch.tensor(p)
    scored = [r[3] for r in rows]
    i = torch.arange(T)
    causal = i[None, :] <= i[:, None]                                    # [T(query), T(key)]
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # key in context or query's segment
    mask = (causal[None] & same)[:, None]
    mask |= torch.eye(T, dtype=torch.bool)[None, None]                   # padding attends to itself
    if mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill_(~mask, torch.finfo(mask_dtype).min)
    return ids, pos, mask, scored


def packed_lls(model: torch.nn.Module, groups: Sequence[Group], device) -> list[list[float]]:
    """Log-likelihoods ``[group][continuation]`` of a batch of groups from one packed forward (``logits_of``
    runs the LM head on the scored positions only where the model takes ``logits_to_keep``)."""
    cfg = getattr(model, "config", None)
    mask_dtype = None
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        mask_dtype = next(model.parameters()).dtype
    ids, pos, mask, scored = packed_inputs(groups, mask_dtype)
    needed = sorted({p for lists in scored for ps in lists for p in ps})
    column = {p: c for c, p in enumerate(needed)}
    logits = logits_of(model, ids.to(device), mask.to(device), positions=torch.tensor(needed, dtype=torch.long),
                       position_ids=pos.to(device))
    out = []
    for b, (lists, (_, conts)) in enumerate(zip(scored, groups)):
        lls = []
        for ps, k in zip(lists, conts):
            lp = F.log_softmax(logits[b, [column[p] for p in ps]].float(), dim=-1)
            lls.append(float(lp.gather(-1, torch.tensor(k, device=lp.device)[:, None]).sum()))
        out.append(lls)
    return out
