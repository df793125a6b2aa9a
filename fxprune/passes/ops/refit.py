"""GOA step 2: refit each consumer of the removed units on the pruned stream's inputs against the
dense model's outputs (``reconstruct/goa.py``). ``CaptureRefitTargets`` runs before the units are
removed and records, on the dense inputs, what the consumers produce; ``Refit`` runs after.

Under data parallelism each rank holds its shard's inputs and targets: the sums are all-reduced
(``ctx.reduce``) before the solve, so every rank computes the same weights.
"""
from __future__ import annotations

import torch

from ...calibration.blocks import block_output
from ...linalg import solve_damped
from ..consumers import consumers
from ..reconstruct import ConsumerLayer
from ..reconstruct.goa import RefitAccumulator, with_ones
from ..reconstruct.liar import kept_gram
from .base import ByBlock, GroupsOp
from .capture import capture_io


class CaptureRefitTargets(GroupsOp):
    name, modifies, needs_dense, reads_stats = "capture_refit_targets", False, True, False
    resumable = True  # keeps nothing across blocks (ctx.scratch only)

    def apply(self, ctx, stats):
        names = list(dict.fromkeys(c.module for g in self.groups(ctx.index) for c in consumers(g)))
        mods = [self.model.get_submodule(n) for n in names]
        outs = capture_io(ctx.block, mods, ctx.dense_inputs)
        ctx.scratch["refit_targets"] = {n: [y for _, y in pairs] for n, pairs in zip(names, outs)}


class Refit(ByBlock):
    name, reads_stats = "goa_refit", False
    resumable = True  # keeps nothing across blocks

    def __init__(self, by_block: dict, damping: float, skip_first: bool = False):
        super().__init__(by_block)
        self.damping, self.skip_first = damping, skip_first

    def apply(self, ctx, stats):
        layers = [layer for layer, _ in ctx.scratch["removed"]]
        targets = ctx.scratch.pop("refit_targets")
        ios = capture_io(ctx.block, [l.module for l in layers], ctx.inputs)
        for layer, pairs in zip(layers, ios):
            acc = RefitAccumulator()
            for (x, _), y in zip(pairs, targets[layer.name]):
                acc.add(_tokens(x, self.skip_first), _tokens(y, self.skip_first))
            acc.A, acc.C = ctx.reduce(acc.A), ctx.reduce(acc.C)
            acc.solve_into(layer, self.damping)


def _tokens(t, skip_first: bool):
    """``t`` (batch, tokens, ...) without each window's first token when ``skip_first``."""
    return t[:, 1:] if skip_first and t.dim() >= 3 else t


def _adds_to_output(block, module, inp, out, tol: float = 1e-3) -> bool:
    """Whether ``module``'s output is added unchanged to ``block``'s output: adding ``delta`` to it moves
    the block's output by ``delta`` (relative error under ``tol``) on one calibration batch."""
    delta = {}

    def hook(m, args, y):
        d = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(y)
        d = d * (0.01 * y.float().std().clamp_min(1e-6)).to(y.dtype)
        delta["d"] = d
        return y + d

    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            moved = block_output(block(*inp.args, **inp.kwargs))
    finally:
        h.remove()
    d = delta.get("d")
    if d is None or d.numel() != out.numel():
        return False
    d = d.reshape(out.shape)  # OPT's FFN runs on [batch * tokens, d]
    err = ((moved - out) - d).float().norm() / d.float().norm().clamp_min(1e-30)
    return bool(err < tol)


def _linear_layers(block) -> list[tuple[str, int]]:
    """``(name in block, input dim of its weight)`` of every nn.Linear / GPT-2 Conv1D-like leaf of ``block``."""
    out = []
    for name, m in block.named_modules():
        w = getattr(m, "weight", None)
        if not name or not isinstance(w, torch.Tensor) or w.dim() != 2 or list(m.children()):
            continue
        if isinstance(m, torch.nn.Linear):
            out.append((name, 1))
        elif type(m).__name__ == "Conv1D":
            out.append((name, 0))
    return out


def _writes_stream(block, module, inp, out, tol: float = 1e-3) -> bool:
    """Whether ``module``'s output and the block's input are summed into the stream the rest of ``block``
    reads (a pre-norm block's ``o_proj``: ``h = x + o_proj(...)``): with the block's input moved by ``d`` and
    the module's output replaced by its old output minus ``d``, the block's output stays as it was."""
    got = capture_io(block, [module], [inp])[0]
    if not got or not isinstance(got[0][1], torch.Tensor) or got[0][1].numel() != inp.hidden.numel():
        return False
    y0 = got[0][1]
    h = inp.hidden
    d = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32).to(h)
    d = d * (0.01 * h.float().std().clamp_min(1e-6)).to(h.dtype)

    def hook(m, args, y):
        return (y0 - d.reshape(y0.shape)).to(y.dtype)

    hk = module.register_forward_hook(hook)
    try:
        moved_inp = inp.with_hidden(h + d)
        with torch.no_grad():
            moved = block_output(block(*moved_inp.args, **moved_inp.kwargs))
    finally:
        hk.remove()
    err = (moved - out).float().norm() / d.float().norm().clamp_min(1e-30)
    return bool(err < tol)


class CaptureStreamTargets(ByBlock):
    """``refit_scope: stream``: before anything in the block changes, find the linear layers that write
    the residual stream inside the block (``_writes_stream``: ``h = x + layer(...)``, a pre-norm block's
    ``o_proj``) and record the dense stream after each, ``x_dense + layer(dense)``, per batch
    (``ctx.scratch["stream_targets"]``: qualified name -> tensors), for ``BlockRefit``."""

    name, modifies, needs_dense, reads_stats = "capture_stream_targets", False, True, False
    resumable = True  # keeps nothing across blocks

    def __init__(self, by_block: dict, readers: bool = False):
        super().__init__(by_block)
        self.readers = readers

    def active(self, index):
        return True

    def apply(self, ctx, stats):
        first = ctx.inputs[0]
        with torch.no_grad():
            out0 = block_output(ctx.block(*first.args, **first.kwargs))
        linears = [n for n, _ in _linear_layers(ctx.block)]
        names = [n for n in linears if _writes_stream(ctx.block, ctx.block.get_submodule(n), first, out0)]
        mods = [ctx.block.get_submodule(n) for n in names]
        outs = capture_io(ctx.block, mods, ctx.dense_inputs) if mods else []
        ctx.scratch["stream_targets"] = {
            f"{ctx.name}.{n}": [inp.hidden + y.reshape(inp.hidden.shape) for inp, (_, y) in zip(ctx.dense_inputs, pairs)]
            for n, pairs in zip(names, outs)}
        if self.readers:
            readers = [n for n in linears if n not in names
                       and not _adds_to_output(ctx.block, ctx.block.get_submodule(n), first, out0)]
            outs = capture_io(ctx.block, [ctx.block.get_submodule(n) for n in readers], ctx.dense_inputs)
            ctx.scratch["reader_targets"] = {f"{ctx.name}.{n}": [y for _, y in pairs] for n, pairs in zip(readers, outs)}


class BlockRefit(ByBlock):
    """``liar_block``'s step 2 (``reconstruct/liar_block.py``): the consumers of the removed units, in
    forward order, each refit so that the block's output moves to the dense block's output; a consumer
    whose output does not add unchanged to the block's output is skipped.

    With ``Z = [W b]^T`` the consumer's current weights, ``X_a = [X 1]`` its inputs and ``E`` the block's
    output error, the refit toward ``Y + E`` with a ridge towards ``Z`` is ``Z + (A + lambda I)^-1 X_a^T E``,
    ``A = X_a^T X_a``. The first consumer of a block (nothing before it in the block was refit, and
    ``gram_from_stats``: no op before ``RemoveUnits`` changed the block) takes ``A`` from the statistics
    the fold read: removing units leaves the kept inputs as they were, so their Gram is the kept block
    of the fold's (calibration windows are never padded: the statistics and the capture see the same
    tokens). Later consumers accumulate ``A`` from their captured inputs. Sums are fp32 per batch, fp64
    across batches.

    ``scope="stream"`` (``refit_scope``): every block, and in it every linear layer that writes the
    residual stream, pruned or not: those that add to the block's output (target ``Y + E``) and those
    whose output the block adds to its input (``CaptureStreamTargets``; target: the dense stream there,
    ``Y + (x_d + y_d) - (x + Y)``), in forward order, each on the stream the refits before it left. A
    layer without a bias (one no fold gave one) is refit without one: the refit adds no parameters."""

    name, reads_stats, needs_dense = "block_refit", True, True
    resumable = True  # keeps nothing across blocks

    def __init__(self, by_block: dict, damping: float, skip_first: bool = False, gram_from_stats: bool = True,
                 scope: str = "pruned"):
        super().__init__(by_block)
        self.damping, self.skip_first, self.gram_from_stats = damping, skip_first, gram_from_stats
        self.scope = scope
        self.refit: list[str] = []
        self.skipped: list[str] = []

    def active(self, index):
        return self.scope != "pruned" or index in self.by_block

    def request(self, ctx):
        return None  # reads what RemoveUnits' reconstructor asked for (INPUT_GRAM, INPUT_SUM)

    def apply(self, ctx, stats):
        removed = ctx.scratch.get("removed", [])
        keeps = {layer.name: keep for layer, keep in removed}
        cands = {layer.name: layer for layer, _ in removed}
        mid = ctx.scratch.pop("stream_targets", {}) if self.scope != "pruned" else {}
        readers = ctx.scratch.pop("reader_targets", {})
        if self.scope != "pruned":
            for n, dim in _linear_layers(ctx.block):
                q = f"{ctx.name}.{n}"
                if q not in cands:
                    cands[q] = ConsumerLayer(ctx.block, n, f"{n}.weight", dim)
                    cands[q].name = q
        layers = list(cands.values())
        order = {}

        def seen(name):
            def hook(m, a, y):
                order.setdefault(name, len(order))  # returns None: the output stays
            return hook

        hooks = [l.module.register_forward_hook(seen(l.name)) for l in layers]
        try:
            with torch.no_grad():
                first = ctx.inputs[0]
                out0 = block_output(ctx.block(*first.args, **first.kwargs))
        finally:
            for h in hooks:
                h.remove()
        layers = sorted(layers, key=lambda l: order.get(l.name, len(order)))
        plan = []
        for layer in layers:
            if layer.name in mid:
                plan.append((layer, "stream"))
            elif layer.name in readers and layer.W.shape[0] == readers[layer.name][0].shape[-1]:
                plan.append((layer, "reader"))
            elif _adds_to_output(ctx.block, layer.module, first, out0):
                plan.append((layer, "output"))
            elif layer.name in keeps:
                self.skipped.append(layer.name)
        changed = False
        for k, (layer, target) in enumerate(plan):
            got = capture_io(ctx.block, [layer.module, ctx.block], ctx.inputs)
            bias = layer.name in keeps or layer.bias() is not None
            A = None
            if self.gram_from_stats and not changed and layer.name in stats and layer.name in keeps:
                st = stats[layer.name]
                A = kept_gram(st.gram.double(), st.input_sum.double(), st.count, keeps[layer.name])
            D, A_acc = None, None
            for b, ((x, y), (_, o)) in enumerate(zip(got[0], got[1])):
                if target == "output":
                    e = ctx.dense_targets[b] - block_output(o)
                elif target == "reader":
                    e = readers[layer.name][b] - y
                else:
                    h = ctx.inputs[b].hidden
                    e = mid[layer.name][b] - h - y.reshape(h.shape)
                x = x.reshape(*e.shape[:-1], x.shape[-1])  # [batch, tokens, in], also where it ran flattened
                e, x = _tokens(e.float(), self.skip_first), _tokens(x.float(), self.skip_first)
                xa = with_ones(x) if bias else x.reshape(-1, x.shape[-1])
                d = (xa.T @ e.reshape(-1, e.shape[-1])).double()
                D = d if D is None else D.add_(d)
                if A is None:
                    a = (xa.T @ xa).double()
                    A_acc = a if A_acc is None else A_acc.add_(a)
            A = ctx.reduce(A_acc) if A is None else A
            D = ctx.reduce(D)
            delta = solve_damped(A, D, A.shape[0] - 1 if bias else A.shape[0], self.damping)
            if not bias:
                delta = torch.cat([delta, torch.zeros_like(delta[:1])])
            _step_into(layer, delta, bias)
            self.refit.append(layer.name)
            changed = True
            if k == len(plan) - 1 and target == "output":  # the block's output moves by [x 1] delta, exactly
                ctx.outputs = [_moved(block_output(o), x, delta) for (x, _), (_, o) in zip(got[0], got[1])]
            del got
        if ctx.owns_stats:
            for layer in layers:
                if layer.name in keeps:
                    stats.release(layer.name)


@torch.no_grad()
def _moved(out, x, delta):
    """``out`` plus the refit consumer's change ``[x 1] delta`` (its output adds to the block's as is)."""
    x = x.reshape(*out.shape[:-1], x.shape[-1])
    d = delta.to(x.dtype)
    return out + (x @ d[:-1] + d[-1]).to(out.dtype)


@torch.no_grad()
def _step_into(layer, delta, bias: bool = True):
    """``[W b] += delta^T`` (``delta``: (in + 1, out), the last row the bias's; ``bias=False``: ``W`` only)."""
    W = layer.W
    W.add_(delta[:-1].T.to(W.dtype))
    if bias:
        b = layer.bias(create=True)
        b.add_(delta[-1].to(b.dtype))
