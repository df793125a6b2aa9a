"""Normalisations and reductions: the normalised/reduced dims may not lose channels."""
from . import rule
from ..renorm import norm_module


@rule("aten.layer_norm", "aten.native_layer_norm", "aten.rms_norm", "aten._fused_rms_norm")
def layer_norm(ctx):
    x = ctx.tid(ctx.arg(0))
    out = ctx.out if ctx.out in ctx._shapes else (ctx.node.name, 0)
    ns = ctx.arg(1)
    n = len(ns) if isinstance(ns, (list, tuple)) else 1
    r = ctx.rank(x)
    for d in range(r):
        ctx.link1(x, d, out, d)
    for w in (ctx.tid(ctx.arg(2)), ctx.tid(ctx.arg(3)) if "layer_norm" in ctx.op else None):
        if w is not None:
            for i in range(n):
                ctx.link1(w, i, x, r - n + i)
    norm = norm_module(ctx, {r - 1}, statistic=True) if n == 1 else None
    for i in range(n):
        if norm:  # a norm module over the last dim only: lifted for some groups (renorm.py)
            ctx.ag.renorm_block((x, r - 1), f"normalised by {ctx.why}", norm)
        else:
            ctx.block(x, r - n + i, "normalised")


@rule("aten.mean", "aten.sum", "aten.amax", "aten.amin", "aten.max", "aten.min", "aten.var",
      "aten.std", "aten.norm", "aten.linalg_vector_norm", "aten.logsumexp", "aten.prod", "aten.any",
      "aten.all", "aten.argmax", "aten.argmin", "aten.var_mean")
def reduction(ctx):
    src = ctx.tid(ctx.arg(0))
    out = ctx.out if ctx.out in ctx._shapes else (ctx.node.name, 0)
    r = ctx.rank(src)
    dims = ctx.arg(1, "dim", None)
    if ctx.op.endswith(".default") and not isinstance(dims, (list, tuple, int)):
        dims = None
    if isinstance(dims, int):
        dims = [dims]
    keep = bool(ctx.arg(2, "keepdim", False)) if dims is not None else False
    reduced = set(range(r)) if not dims else {d % r for d in dims}
    norm = norm_module(ctx, reduced)  # a norm module's statistic: lifted for some groups (renorm.py)
    for d in reduced:
        if norm:
            ctx.ag.renorm_block((src, d), f"reduced by {ctx.why}", norm)
        else:
            ctx.block(src, d, "reduced")
    if out not in ctx._shapes:
        return
    j = 0
    for d in range(r):
        if d in reduced:
            j += 1 if keep else 0
            continue
        ctx.link1(src, d, out, j)
        j += 1


@rule("aten.cumsum", "aten.cumprod", "aten.diff", "aten.flip", "aten.roll")
def scan(ctx):
    src = ctx.tid(ctx.arg(0))
    out = ctx.out if ctx.out in ctx._shapes else (ctx.node.name, 0)
    r = ctx.rank(src)
    dim = ctx.arg(1, "dim", -1)
    dim = dim[0] if isinstance(dim, (list, tuple)) else dim
    dim = (dim if isinstance(dim, int) else -1) % r
    ctx.block(src, dim, "scanned")
    if out in ctx._shapes and ctx.rank(out) == r:
        for d in range(r):
            if d != dim:
                ctx.link1(src, d, out, d)
        ctx.block(out, dim, "scanned")


@rule("aten.tril", "aten.triu")
def triangle(ctx):
    """A triangular mask over the last two dims (positions): those block, leading dims pass through."""
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    r = ctx.rank(src)
    for d in range(r):
        ctx.link1(src, d, out, d)
    for d in (r - 2, r - 1):
        ctx.block(src, d, "triangular mask")
