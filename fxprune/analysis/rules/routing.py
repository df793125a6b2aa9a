"""Selection by value: top-k, sort, argmax. Their index outputs carry *positions* of a dim (the
index space); indexing a parameter with them couples the parameter's indexed dim to that dim (a
router choosing expert rows: ``rules/indexing.py``)."""
from . import rule


def _outputs(ctx):
    outs = [k for k in ctx._shapes if isinstance(k, tuple) and k[0] == ctx.node.name and isinstance(k[1], int)]
    return sorted(outs, key=lambda k: k[1])


@rule("aten.topk", "aten.sort")
def topk(ctx):
    """values, indices = topk(x, k, dim) / sort(x, dim): other dims pass through; ``dim`` is selected
    by value (soft-blocked: fine for a router's expert dim, where removing an expert is masking its
    score with -inf); the indices' values index ``dim`` of ``x``."""
    src = ctx.tid(ctx.arg(0))
    r = ctx.rank(src)
    is_topk = ctx.op.startswith("aten.topk")
    dim = (ctx.arg(2, "dim", -1) if is_topk else ctx.arg(1, "dim", -1)) % r
    outs = _outputs(ctx)
    for o in outs:
        for d in range(r):
            if d != dim:
                ctx.link1(src, d, o, d)
        ctx.block(o, dim, "selected by value")
    ctx.soft_block(src, dim, "selected by value")
    if is_topk:
        ctx.tag(src, dim, f"topk={int(ctx.arg(1))}")
    if len(outs) > 1:
        ctx.index_space[outs[1]] = (src, dim)
