"""Loss sensitivity of module outputs: the diagonal empirical Fisher of the calibration loss.

``output_fisher(model, windows, modules)`` runs forward + backward over the calibration windows
(next-token loss *summed* over tokens, weights frozen: gradients flow to activations only) and
returns, per module, ``F_i = sum_t (dL/dy_{t,i})^2`` over its output channels ``i``. To second
order, perturbing that output by ``delta_t`` raises the loss by about ``1/2 sum_t sum_i F_i/N
delta_{t,i}^2`` (Fisher approximation of the Hessian, diagonal over channels, averaged over tokens).

Why it is the right currency for pooling costs across layers and kinds: an error in a consumer's
output is worth what it does to the loss, and the gradient already contains everything that lies
between that output and the loss: a norm after the FFN/attention output (Gemma's post-norms divide
the error by the output's own scale), residual-stream growth with depth, the final norm and the LM
head. Scores in this currency are invariant to any rescaling the network undoes (``W_down * c``
before a post-norm leaves the loss, and these costs, unchanged), which per-layer raw energies are not.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ..calibration.layerwise import forward_kwargs


def output_fisher(model: torch.nn.Module, windows: torch.Tensor, modules: list[str], batch_size: int = 4,
                  max_windows: int | None = None) -> dict[str, torch.Tensor]:
    """``{module: F}`` with ``F`` [d_out] float64 (see the module docstring); ``count`` tokens used
    are stored under the key ``"__tokens__"`` as a 0-d tensor."""
    sums = {m: None for m in modules}
    hooks = []
    emb = model.get_input_embeddings()
    hooks.append(emb.register_forward_hook(lambda m, a, out: out.requires_grad_(True)))

    def make(name):
        def hook(mod, args, out):
            y = out if isinstance(out, torch.Tensor) else out[0]

            def grad_hook(g, name=name):
                s = g.detach().double().pow(2).reshape(-1, g.shape[-1]).sum(0)
                sums[name] = s if sums[name] is None else sums[name] + s
            if y.requires_grad:
                y.register_hook(grad_hook)
        return hook

    for name in modules:
        hooks.append(model.get_submodule(name).register_forward_hook(make(name)))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    tokens = 0
    n = windows.shape[0] if max_windows is None else min(max_windows, windows.shape[0])
    try:
        with torch.enable_grad():
            for i in range(0, n, batch_size):
                ids = windows[i:min(i + batch_size, n)]
                out = model(**forward_kwargs(model, {"input_ids": ids}))
                logits = out.logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
                loss.backward()
                tokens += ids[:, 1:].numel()
                del out, logits, loss
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    missing = [m for m, s in sums.items() if s is None]
    if missing:
        raise RuntimeError(f"output_fisher: no gradient reached {missing[:3]} (not on the loss path?)")
    return {**sums, "__tokens__": torch.tensor(float(tokens))}


class SkipPrefix:
    """While active, the blocks ``blocks`` (a prefix of the model's repeated blocks) do not run: each
    returns the rows of ``hidden`` for the current batch, shaped like ``like`` (the block's own output: a
    tensor, or a tuple whose first element is the hidden states). The batches are taken in order: each
    call of the first skipped block moves on by the rows it receives. The model's forward then runs only
    what follows the prefix (the remaining blocks, the final norm, the LM head) on hidden states captured
    earlier: the probe of block ``i`` skips the ``i`` blocks before it. Any loop over the windows of
    ``hidden`` in order can run inside it (``evaluation.perplexity``)."""

    def __init__(self, blocks, hidden: torch.Tensor, like):
        self.blocks, self.hidden, self.like = list(blocks), hidden, like

    def _out(self, first: bool, *args, **kwargs):
        if first:  # a new batch enters the model: its rows follow the previous batch's
            n = (args[0] if args else kwargs["hidden_states"]).shape[0]
            self.rows = slice(self._next, self._next + n)
            self._next += n
        h = self.hidden[self.rows]
        return h if isinstance(self.like, torch.Tensor) else (h,) + tuple(self.like[1:])

    def __enter__(self):
        self._next, self.rows = 0, None
        self._own = [vars(b).get("forward") for b in self.blocks]  # e.g. accelerate's hooks patch it
        for i, b in enumerate(self.blocks):
            b.forward = partial(self._out, i == 0)  # an instance attribute shadows the class's forward
        return self

    def __exit__(self, *exc):
        for b, own in zip(self.blocks, self._own):
            if own is None:
                del b.forward
            else:
                b.forward = own
