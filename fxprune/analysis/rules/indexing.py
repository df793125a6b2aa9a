"""Slicing and joining: slice, select, cat, stack, split/chunk/unbind, getitem, index.

Aligned pieces (a slice of length n/k at a multiple of n/k, an equal split, a cat of equal parts)
refine the dim into [k pieces, n/k channels]: channels couple across pieces, the piece factor is
blocked. Unequal pieces are *cuts* (``AxisGraph.cut``): the dim becomes segments, each its own
index space (a GQA qkv projection's q, k and v rows; Mamba-2's z, xBC and dt). A strided slice
blocks the dim.
"""
from . import rule


def _piece(ctx, whole_tid, whole_dim, part_tid, part_dim, n_pieces, what):
    sel = ctx.virtual(f"{what}{part_tid}", n_pieces, block=f"pieces selected")
    ctx.link([(whole_tid, whole_dim)], [(sel, 0), (part_tid, part_dim)])


@rule("aten.slice")
def slice_(ctx):
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    r = ctx.rank(src)
    dim = ctx.arg(1, "dim", 0) % r
    n = ctx.shape(src)[dim]
    start = ctx.arg(2, "start", 0) or 0
    end = ctx.arg(3, "end", None)
    step = ctx.arg(4, "step", 1) or 1
    end = n if end is None or end > n else end
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    length = max(0, end - start)
    for d in range(r):
        if d != dim:
            ctx.link1(src, d, out, d)
    if step == 1 and start == 0 and length == n:
        ctx.link1(src, dim, out, dim)
    elif step == 1 and length > 0:
        # a piece: equal aligned pieces become [pieces, channels] factors, unequal ones segments
        # (decided once every slice of the dim is known: AxisGraph.segment)
        ctx.ag.cut((src, dim), (out, dim), start, ctx.why)
    else:
        ctx.block(src, dim, "strided slice")
        ctx.block(out, dim, "strided slice")


@rule("aten.select")
def select(ctx):
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    r = ctx.rank(src)
    dim = ctx.arg(1) % r
    ctx.block(src, dim, "indexed")
    for d in range(r):
        if d != dim:
            ctx.link1(src, d, out, d if d < dim else d - 1)


@rule("aten.cat", "aten.concat", "aten.concatenate")
def cat(ctx):
    parts = [ctx.tid(t) for t in ctx.arg(0)]
    parts = [p for p in parts if p is not None and ctx.shape(p) and 0 not in ctx.shape(p)]
    out = ctx.out
    r = ctx.rank(out)
    dim = (ctx.arg(1, "dim", 0) or 0) % r
    sizes = {ctx.shape(p)[dim] for p in parts}
    for p in parts:
        for d in range(r):
            if d != dim:
                ctx.link1(p, d, out, d)
    if len(sizes) == 1 and len(parts) > 0:
        for p in parts:
            _piece(ctx, out, dim, p, dim, len(parts), "cat")
    else:
        off = 0
        for p in parts:
            ctx.ag.cut((out, dim), (p, dim), off, ctx.why)
            off += ctx.shape(p)[dim]


@rule("aten.stack")
def stack(ctx):
    parts = [ctx.tid(t) for t in ctx.arg(0)]
    out = ctx.out
    r = ctx.rank(out)
    dim = (ctx.arg(1, "dim", 0) or 0) % r
    ctx.block(out, dim, "stacked")
    for p in parts:
        if p is None:
            continue
        for d in range(ctx.rank(p)):
            ctx.link1(p, d, out, d if d < dim else d + 1)


@rule("aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unsafe_split", "aten.tensor_split",
      "aten.unbind")
def split(ctx):
    src = ctx.tid(ctx.arg(0))
    r = ctx.rank(src)
    outs = [k for k in ctx._shapes if isinstance(k, tuple) and k[0] == ctx.node.name and isinstance(k[1], int)]
    outs.sort(key=lambda k: k[1])
    if ctx.op.startswith("aten.unbind"):
        dim = ctx.arg(1, "dim", 0) % r
        ctx.block(src, dim, "unbound")
        for o in outs:
            for d in range(r):
                if d != dim:
                    ctx.link1(src, d, o, d if d < dim else d - 1)
        return
    dim = ctx.arg(2, "dim", 0) if not ctx.op.startswith("aten.chunk") else ctx.arg(2, "dim", 0)
    dim = (dim or 0) % r
    sizes = {ctx.shape(o)[dim] for o in outs}
    for o in outs:
        for d in range(r):
            if d != dim:
                ctx.link1(src, d, o, d)
    if len(sizes) == 1 and sum(ctx.shape(o)[dim] for o in outs) == ctx.shape(src)[dim]:
        for o in outs:
            _piece(ctx, src, dim, o, dim, len(outs), "split")
    elif sum(ctx.shape(o)[dim] for o in outs) == ctx.shape(src)[dim]:
        off = 0
        for o in outs:  # unequal pieces (Mamba-2's z/xBC/dt, a GQA qkv): segments of the dim
            ctx.ag.cut((src, dim), (o, dim), off, ctx.why)
            off += ctx.shape(o)[dim]
    else:
        ctx.block(src, dim, "split with a remainder")
        for o in outs:
            ctx.block(o, dim, "split with a remainder")


@rule("getitem")
def getitem(ctx):
    src, idx = ctx.arg(0), ctx.arg(1)
    key = (src.name, idx)
    if key not in ctx._shapes or ctx.out not in ctx._shapes:
        return
    for d in range(ctx.rank(key)):
        ctx.link1(key, d, ctx.out, d)


def _constant_piece(ctx, src, out, dim, idx) -> bool:
    """``x[..., [a, a+1, ..., b], ...]`` with constant positions (export lifts ``[-2]`` to a tensor
    constant): the same piece as the slice ``[a, b+1)`` of that dim (Falcon's multi-query k and v
    rows after ``view(.., heads + 2, head_dim)``), so it is a cut like a slice. Only positions that
    stay valid when other pieces of the dim shrink: counted from the end (all negative: the pieces
    after them are fixed) or starting at 0. Returns False (not handled) otherwise."""
    vals = ctx.constants.get(idx)
    if vals is None or vals.dim() != 1 or vals.numel() == 0 or ctx.rank(out) != ctx.rank(src):
        return False
    v = [int(x) for x in vals.tolist()]
    n = ctx.shape(src)[dim]
    if not (all(x < 0 for x in v) or v[0] == 0) or any(x < -n or x >= n for x in v):
        return False
    v = [x % n for x in v]
    if v != list(range(v[0], v[0] + len(v))) or ctx.shape(out)[dim] != len(v):
        return False
    for d in range(ctx.rank(src)):
        if d != dim:
            ctx.link1(src, d, out, d)
    if len(v) == n:
        ctx.link1(src, dim, out, dim)
    else:
        ctx.ag.cut((src, dim), (out, dim), v[0], ctx.why)
    return True


@rule("aten.index")
def index(ctx):
    """Advanced indexing ``x[..., idx, ...]``: indexed dims are blocked; the others pass through.

    Handles adjacent index tensors (the result dims sit where the first one was); anything else
    blocks every dim."""
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    idx = list(ctx.arg(1))
    pos = [i for i, t in enumerate(idx) if t is not None]
    r, ro = ctx.rank(src), ctx.rank(out)
    if len(pos) == 1 and _constant_piece(ctx, src, out, pos[0], ctx.tid(idx[pos[0]])):
        return
    for i in pos:
        space = ctx.index_space.get(ctx.tid(idx[i]))
        if space is not None and ctx.shape(space[0])[space[1]] == ctx.shape(src)[i]:
            # the index values are positions of ``space`` (a router's top-k over experts): row u of
            # ``src`` is used exactly when position u is chosen, so the two dims are one group
            ctx.link([(src, i)], [space], f"routed by {ctx.why}")
            ctx.tag(src, i, "expert_index")
            ctx.tag(src, i, "expert")
        else:
            ctx.block(src, i, "indexed")
    if not pos or pos != list(range(pos[0], pos[-1] + 1)):
        ctx.block_all(src, "indexed")
        ctx.block_all(out, "indexed")
        return
    n_idx = ro - (r - len(pos))  # dims the broadcast index shape adds
    for d in range(pos[0]):
        ctx.link1(src, d, out, d)
    for k, d in enumerate(range(pos[-1] + 1, r)):
        ctx.link1(src, d, out, pos[0] + n_idx + k)
    for j in range(pos[0], pos[0] + n_idx):
        ctx.block(out, j, "indexed")


@rule("aten.gather", "aten.take_along_dim")
def gather(ctx):
    """``x.gather(dim, index)``: out[..., j, ...] = x[..., index[..., j, ...], ...]. Other dims pass
    through; ``dim`` of ``x`` is selected by value: soft-blocked when the index comes from a top-k
    over that same dim (a router reading its chosen experts' scores), blocked otherwise."""
    src, idx, out = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(2, "index")), ctx.out
    dim = ctx.arg(1, "dim")
    if src is None or idx is None or not isinstance(dim, int):
        for t in ctx.tensor_args() + [out]:
            ctx.block_all(t, "gathered")
        return
    r = ctx.rank(src)
    dim %= r
    for d in range(r):
        if d == dim:
            continue
        for t in (idx, out):
            if ctx.rank(t) == r and ctx.shape(t)[d] == ctx.shape(src)[d]:
                ctx.link1(src, d, t, d)
        if ctx.rank(idx) == ctx.rank(out) == r:
            ctx.link1(idx, d, out, d)
    if ctx.rank(idx) == ctx.rank(out):
        ctx.link1(idx, dim, out, dim)
    space = ctx.index_space.get(idx)
    if space is not None and ctx.shape(space[0])[space[1]] == ctx.shape(src)[dim]:
        ctx.link([(src, dim)], [space], ctx.why)
        ctx.soft_block(src, dim, "gathered by value")
    else:
        ctx.block(src, dim, "gathered")
