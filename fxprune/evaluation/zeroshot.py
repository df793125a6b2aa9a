"""Zero-shot multiple-choice scoring following lm-eval's log-likelihood protocol (own scorer).

For each request ``(context, continuation)`` (lm-eval ``HFLM._loglikelihood_tokens``):
1. trailing spaces of the context move to the continuation;
2. ``whole = enc(context + continuation)``, ``ctx = enc(context)``, continuation tokens =
   ``whole[len(ctx):]`` (an empty context uses the start/end-of-text token as prefix);
   no special tokens are added (lm-eval's default for causal models);
3. the model sees ``(ctx + cont)[-(max_len+1):][:-1]`` (``max_len``: the model's maximum positions) and the log-likelihood is the sum of
   log-softmax scores of the continuation tokens.
Per item: ``acc`` = argmax of log-likelihoods is gold; ``acc_norm`` = argmax of
log-likelihood / ``len(choice)``, the choice string without the leading delimiter, in characters,
exactly as lm-eval's ``acc_norm`` (the same as bytes for ASCII text; for WinoGrande's partial
scoring the "choices" are the two context options, as in lm-eval, where only acc is reported).

Requests are sorted by length and batched up to a token budget; right padding never affects the
scored positions of a causal model. Where the model takes ``logits_to_keep`` (Hugging Face causal
LMs), the LM head runs only on the positions that score a continuation token (and on a shared
context's last position): the same log-likelihoods, without the vocabulary projection of every
context token (a fifth of SmolLM2's multiply-adds per token).

Shared contexts (``share_context``, on by default for models with a KV cache): the choices of one
item share their context tokens (lm-eval feeds ``enc(context)`` followed by the continuation tokens,
so the prefix is exactly common). Packed (``packing.py``, the default where the model takes position
ids and 4-D masks and a once-per-model probe on a real item agrees): one row per item holds the context
once and every choice after it under a tree mask, rows batched up to the token budget; measured on
SmolLM2 (fp32, one thread, 40 items per task) 1.2–2.2× faster than separate sequences on HellaSwag,
BoolQ, ARC, OBQA and WinoGrande, PIQA unchanged, log-likelihoods within 1e-4. Otherwise (cached): the
context is run once with ``use_cache=True``; its last logits
score every choice's first token, and the cache, repeated once per choice, scores the remaining
continuation tokens in one right-padded batch. The inputs are the same token sequences as without
sharing, so the log-likelihoods agree to float rounding (tested to 1e-4); BoolQ (one-token answers)
needs one forward per item instead of two, HellaSwag about half the tokens. Items with short contexts
(ARC, OBQA, PIQA) stay in the token-budget batches, which are faster for them.
"""
from __future__ import annotations

from contextlib import nullcontext
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F

from ..data import tokenize
from .packing import accepts_packing, attention_window, packed_length, packed_lls
from .perplexity import keeps_logits, logits_of
from .tasks import MCItem


@dataclass(frozen=True)
class TaskResult:
    acc: float
    acc_norm: float
    items: int

    def as_dict(self) -> dict:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "items": self.items}


def encode_request(tokenizer: Any, context: str, continuation: str, prefix_token: int | None = None
                   ) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) of one request, as lm-eval splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":
        prefix = prefix_token if prefix_token is not None else 0
        return [prefix], tokenize(tokenizer, continuation, add_special_tokens=False)
    whole = tokenize(tokenizer, context + continuation, add_special_tokens=False)
    ctx = tokenize(tokenizer, context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, tokenizer: Any, requests: Sequence[tuple[str, str]], *,
                   max_length: int | None = None, max_batch_tokens: int = 4096,
                   autocast: Callable[[], ContextManager] = nullcontext, progress: bool = True,
                   share_context: bool | None = None, packing: bool | None = None) -> list[float]:
    """Sum of continuation log-probabilities for each ``(context, continuation)`` request.

    ``share_context``: score requests with identical context tokens together (True: every such group;
    None: where the model has a standard KV cache, see ``supports_shared_context``; False: never).
    Shared groups are scored packed (``packing.py``: one tree-masked row per item, batched) where the
    model takes position ids and 4-D masks and one real item scores the same packed as unpacked
    (``packing`` None: check once per model; True: pack without the check; False: never pack); else from
    one cached context forward per group saving at least 128 context tokens (``None``) or every group
    (``True``)."""
    from tqdm.auto import tqdm
    prefix = getattr(tokenizer, "eos_token_id", None)
    if prefix is None:
        prefix = getattr(tokenizer, "bos_token_id", None)
    device = next(model.parameters()).device
    if max_length is None:
        cfg = getattr(model, "config", None)
        max_length = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    min_saved = 0 if share_context else 128
    if share_context is None:
        share_context = supports_shared_context(model)
    seqs, groups = [], {}
    for j, (ctx, cont) in enumerate(requests):
        c, k = encode_request(tokenizer, ctx, cont, prefix)
        full = (c + k)[-(max_length + 1):]
        seqs.append((full[:-1], full[-len(k):] if k else []))
        if share_context and k and len(c) + len(k) <= max_length + 1:
            groups.setdefault(tuple(c), []).append((j, k))
    out = [0.0] * len(seqs)
    bar = tqdm(total=len(seqs), desc="loglikelihood", leave=False, disable=not progress)
    shared = set()
    trim = keeps_logits(model)  # the LM head can run on the scored positions alone
    if groups and packing is not False and accepts_packing(model):
        span = attention_window(model)
        fits = {c: m for c, m in groups.items() if span is None or len(c) + max(len(k) for _, k in m) - 1 <= span}
        if fits and packing is None:
            with autocast():
                packing = _packing_agrees(model, fits, seqs, device)
        if fits and packing:
            _packed(model, fits, out, device, max_batch_tokens, autocast, bar)
            shared.update(j for members in fits.values() for j, _ in members)
            groups = {c: m for c, m in groups.items() if c not in fits}
    for c, members in groups.items():
        # short contexts: one forward per item costs more than the tokens it saves (unshared requests
        # are batched up to max_batch_tokens); share only where it saves >= min_saved tokens
        if len(members) < 2 or (len(members) - 1) * len(c) < min_saved:
            continue
        with autocast():
            for j, ll in zip([j for j, _ in members],
                             _shared_context_lls(model, list(c), [k for _, k in members], device, trim)):
                out[j] = ll
        shared.update(j for j, _ in members)
        bar.update(len(members))
    rest = [i for i in range(len(seqs)) if i not in shared]
    with autocast():
        _unshared(model, seqs, rest, out, device, max_batch_tokens, bar)
    bar.close()
    return out


_PACKING_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def _packing_agrees(model, groups, seqs, device) -> bool:
    """Whether packed scoring of one real item (the first group with most choices) matches its unpacked
    requests (0.01 nats + 1%: bf16 rounding passes, a misplaced position or mask does not); remembered
    per model, a disagreement is warned about once."""
    if model in _PACKING_CHECKED:
        return _PACKING_CHECKED[model]
    c, members = max(groups.items(), key=lambda kv: len(kv[1]))
    plain = [0.0] * len(seqs)
    _unshared(model, seqs, [j for j, _ in members], plain, device, 1 << 30, None)
    try:
        packed = packed_lls(model, [(list(c), [k for _, k in members])], device)[0]
        why = "disagrees with separate sequences (positions or masks are derived otherwise)"
    except Exception as e:  # noqa: BLE001 - a model that rejects 4-D masks is scored unpacked
        packed, why = None, f"fails ({type(e).__name__}: {e})"
    ok = packed is not None and all(abs(a - plain[j]) <= 0.01 + 0.01 * abs(plain[j])
                                    for a, (j, _) in zip(packed, members))
    if not ok:
        import warnings
        warnings.warn(f"{type(model).__name__}: packed shared-context scoring {why}; scoring unpacked",
                      RuntimeWarning)
    _PACKING_CHECKED[model] = ok
    return ok


def _packed(model, groups, out, device, max_batch_tokens, autocast, bar) -> None:
    """Every group in packed rows, longest first, batched up to ``max_batch_tokens`` (padded)."""
    order = sorted((((list(c), [k for _, k in members]), [j for j, _ in members]) for c, members in groups.items()),
                   key=lambda g: -packed_length(g[0]))
    i = 0
    while i < len(order):
        batch = order[i:i + max(1, max_batch_tokens // max(packed_length(order[i][0]), 1))]
        with autocast():
            lls = packed_lls(model, [g for g, _ in batch], device)
        for (_, idx), row in zip(batch, lls):
            for j, ll in zip(idx, row):
                out[j] = ll
            bar.update(len(idx))
        i += len(batch)


def _unshared(model, seqs, rest, out, device, max_batch_tokens, bar) -> None:
    """Requests ``rest`` as separate right-padded sequences, longest first, up to ``max_batch_tokens``."""
    order = sorted(rest, key=lambda i: -len(seqs[i][0]))
    i = 0
    while i < len(order):
        longest = len(seqs[order[i]][0])
        n = max(1, max_batch_tokens // max(longest, 1))
        idx = order[i:i + n]
        ids = torch.zeros(len(idx), longest, dtype=torch.long)
        mask = torch.zeros(len(idx), longest, dtype=torch.long)
        for r, j in enumerate(idx):
            inp = seqs[j][0]
            ids[r, :len(inp)] = torch.tensor(inp)
            mask[r, :len(inp)] = 1
        # only the positions that score a continuation token go through the LM head
        needed = sorted({p for j in idx for p in range(len(seqs[j][0]) - len(seqs[j][1]), len(seqs[j][0]))})
        column = {p: c for c, p in enumerate(needed)}
        logits = logits_of(model, ids.to(device), mask.to(device), positions=torch.tensor(needed, dtype=torch.long))
        for r, j in enumerate(idx):
            inp, cont = seqs[j]
            if not cont:
                continue
            pos = torch.tensor([column[p] for p in range(len(inp) - len(cont), len(inp))])
            lp = F.log_softmax(logits[r, pos].float(), dim=-1)
            out[j] = float(lp.gather(-1, torch.tensor(cont, device=lp.device)[:, None]).sum())
        if bar is not None:
            bar.update(len(idx))
        i += n


def supports_shared_context(model: torch.nn.Module) -> bool:
    """True for Hugging Face transformer LMs with a standard KV cache (not Mamba's state cache)."""
    from ..models.runtime import has_kv_cache
    return has_kv_cache(model) and hasattr(model, "prepare_inputs_for_generation")


def _shared_context_lls(model: torch.nn.Module, ctx: list[int], conts: list[list[int]], device,
                        trim: bool = False) -> list[float]:
    """Log-likelihoods of several continuations after one context, from one cached context forward
    (``trim``: the model takes ``logits_to_keep``; only the context's last position is projected)."""
    kw = {"logits_to_keep": 1} if trim else {}
    out = model(input_ids=torch.tensor([ctx], device=device), use_cache=True, **kw)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
    lls = [float(first[k[0]]) for k in conts]
    multi = [r for r, k in enumerate(conts) if len(k) > 1]
    if not multi:
        return lls
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(len(multi))
    m = max(len(conts[r]) - 1 for r in multi)
    ids = torch.zeros(len(multi), m, dtype=torch.long)
    mask = torch.zeros(len(multi), len(ctx) + m, dtype=torch.long)
    mask[:, :len(ctx)] = 1
    for row, r in enumerate(multi):
        k = conts[r]
        ids[row, :len(k) - 1] = torch.tensor(k[:-1])
        mask[row, len(ctx):len(ctx) + len(k) - 1] = 1
    import inspect
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, **{key: cache}).logits
    for row, r in enumerate(multi):
        k = conts[r]
        lp = F.log_softmax(logits[row, :len(k) - 1].float(), dim=-1)
        lls[r] += float(lp.gather(-1, torch.tensor(k[1:], device=lp.device)[:, None]).sum())
    return lls


def score_items(items: Sequence[MCItem], lls: Sequence[float]) -> TaskResult:
    """acc / acc_norm from per-request log-likelihoods laid out item after item."""
    acc = acc_norm = 0
    k = 0
    for item in items:
        ll = lls[k:k + len(item.requests)]
        k += len(item.requests)
        norm = [v / n for v, n in zip(ll, item.norm_lengths)]
        acc += int(max(range(len(ll)), key=ll.__getitem__) == item.gold)
        acc_norm += int(max(range(len(norm)), key=norm.__getitem__) == item.gold)
    n = max(len(items), 1)
    return TaskResult(acc / n, acc_norm / n, len(items))


def evaluate_items(model: torch.nn.Module, tokenizer: Any, items: Sequence[MCItem], **kw) -> TaskResult:
    """acc and acc_norm of ``model`` on ``items``."""
    requests = [r for item in items for r in item.requests]
    return score_items(items, loglikelihoods(model, tokenizer, requests, **kw))
