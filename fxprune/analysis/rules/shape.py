"""View-like ops: reshape (incl. view/unsqueeze/squeeze/flatten), transpose/permute, expand."""
from math import prod

from . import rule


def _groups(a: tuple, b: tuple):
    """Pair up runs of dims of ``a`` and ``b`` whose products match (size-1 dims are skipped)."""
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [i for i, s in enumerate(b) if s != 1]
    out, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ga, gb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                ga.append(ia[i]); pa *= a[ia[i]]; i += 1
            else:
                gb.append(ib[j]); pb *= b[ib[j]]; j += 1
        out.append((ga, gb))
    return out


@rule("aten.view", "aten.reshape", "aten._unsafe_view", "aten.unsqueeze", "aten.squeeze",
      "aten.flatten", "aten.unflatten", "aten.view_as", "aten.reshape_as")
def reshape(ctx):
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    if src is None or out not in ctx._shapes:
        return
    a, b = ctx.shape(src), ctx.shape(out)
    assert prod(a) == prod(b), ctx.why
    for ga, gb in _groups(a, b):
        ctx.link([(src, d) for d in ga], [(out, d) for d in gb])


def _perm(ctx):
    op = ctx.op.split(".")[1]
    r = ctx.rank(ctx.out)
    if op in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = ctx.arg(1) % r, ctx.arg(2) % r
        p = list(range(r)); p[d0], p[d1] = p[d1], p[d0]
        return p
    if op in ("t", "numpy_T"):  # numpy_T: ``x.T`` on any rank reverses every dim
        return list(range(r))[::-1]
    if op in ("mT", "mH", "adjoint"):  # ``x.mT``: the last two dims swapped
        p = list(range(r)); p[-1], p[-2] = p[-2], p[-1]
        return p
    if op == "permute":
        return [d % r for d in ctx.arg(1)]
    if op == "movedim":
        src, dst = ctx.arg(1), ctx.arg(2)
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src, dst = [s % r for s in src], [d % r for d in dst]
        rest = [d for d in range(r) if d not in src]
        p = [None] * r
        for s, d in zip(src, dst):
            p[d] = s
        it = iter(rest)
        return [x if x is not None else next(it) for x in p]
    raise AssertionError(op)


@rule("aten.transpose", "aten.permute", "aten.t", "aten.swapaxes", "aten.swapdims", "aten.movedim", "aten.numpy_T",
      "aten.mT", "aten.mH", "aten.adjoint")
def permute(ctx):
    src = ctx.tid(ctx.arg(0))
    if src is None:
        return
    for j, i in enumerate(_perm(ctx)):
        ctx.link1(src, i, ctx.out, j)


@rule("aten.expand", "aten.expand_as", "aten.broadcast_to")
def expand(ctx):
    """Equal dims couple; dims created by broadcasting are fresh (tagged ``broadcast``: a GQA repeat)."""
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    rs, ro = ctx.rank(src), ctx.rank(out)
    for j in range(ro):
        i = j - (ro - rs)
        if i >= 0 and ctx.shape(src)[i] == ctx.shape(out)[j]:
            ctx.link1(src, i, out, j)
        else:
            ctx.tag(out, j, "broadcast")


@rule("aten.repeat_interleave")
def repeat_interleave(ctx):
    """``repeat_interleave(x, r, dim)``: output index ``i * r + j`` is input ``i``, so the output dim
    refines into [input dim, r repeats] (a broadcast, like GQA's key/value repeat)."""
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    reps, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if src is None or out not in ctx._shapes:
        return
    if not isinstance(reps, int) or dim is None:
        for t in (src, out):
            ctx.block_all(t, "repeated by a tensor of counts" if dim is not None else "flattened and repeated")
        return
    r = ctx.rank(src)
    dim %= r
    for d in range(r):
        if d != dim:
            ctx.link1(src, d, out, d)
    if reps > 1:
        rep = ctx.virtual("rep", reps, tag="broadcast")
        ctx.link([(out, dim)], [(src, dim), (rep, 0)])
    else:
        ctx.link1(src, dim, out, dim)


@rule("aten.repeat", "aten.tile")
def repeat(ctx):
    """``x.repeat(r0, r1, ...)``: output dim i is [r_i copies, input dim i] (row-major); new leading
    dims are copies. Copies are broadcasts (like a GQA repeat)."""
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    reps = list(ctx.arg(1, "repeats") or ctx.arg(1, "dims") or [])
    if src is None or out not in ctx._shapes:
        return
    ro, rs = ctx.rank(out), ctx.rank(src)
    reps = [1] * (ro - len(reps)) + reps
    for j in range(ro):
        i = j - (ro - rs)
        r = int(reps[j])
        if i < 0:
            ctx.tag(out, j, "broadcast")
            continue
        if r == 1:
            ctx.link1(src, i, out, j)
        else:
            rep = ctx.virtual(f"rep{j}", r, tag="broadcast")
            ctx.link([(out, j)], [(rep, 0), (src, i)])


@rule("aten.view_as_complex")
def view_as_complex(ctx):
    """(..., n, 2) real -> (..., n) complex: the pair dim is consumed."""
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    r = ctx.rank(src)
    for d in range(r - 1):
        ctx.link1(src, d, out, d)
    ctx.block(src, r - 1, "real/imaginary pair")


@rule("aten.view_as_real")
def view_as_real(ctx):
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    r = ctx.rank(src)
    for d in range(r):
        ctx.link1(src, d, out, d)
    ctx.block(out, r, "real/imaginary pair")
