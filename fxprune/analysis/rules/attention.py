"""Attention: the fused SDPA op and softmax (the explicit form is matmul + softmax + matmul)."""
from . import rule


@rule("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu")
def sdpa(ctx):
    """q (.., Hq, S, D), k (.., Hk, S', D), v (.., Hk, S', Dv) -> out (.., Hq, S, Dv).

    Heads couple q/k/v/out; q and k channels couple with each other (the dot product); v channels
    couple with out. Under ``enable_gqa`` q heads refine into [kv heads, repeats]. Without an
    explicit ``scale`` the scale derives from D, so q/k channels are blocked.
    """
    q, k, v = (ctx.tid(ctx.arg(i)) for i in range(3))
    out = ctx.out if ctx.out in ctx._shapes else (ctx.node.name, 0)
    mask = ctx.tid(ctx.arg(3, "attn_mask"))
    r = ctx.rank(q)
    for d in range(r - 3):
        for t in (k, v, out):
            if ctx.shape(t)[d] == ctx.shape(q)[d]:
                ctx.link1(q, d, t, d)
    hq, hk = ctx.shape(q)[-3], ctx.shape(k)[-3]
    ctx.link1(q, -3, out, -3)
    ctx.link1(k, -3, v, -3)
    if hq == hk:
        ctx.link1(q, -3, k, -3)
    elif hq % hk == 0:
        rep = ctx.virtual("gqa_rep", hq // hk, tag="broadcast")
        ctx.link([(q, r - 3)], [(k, r - 3), (rep, 0)])
        ctx.tag(rep, 0, "attn_head")
    for t in (q, k, v, out):
        ctx.tag(t, -3, "attn_head")
    ctx.link1(q, -2, out, -2)
    ctx.link1(k, -2, v, -2)
    ctx.block(k, -2, "softmax over keys")
    ctx.link1(q, -1, k, -1)
    ctx.tag(q, -1, "attn_qk_dim")
    ctx.link1(v, -1, out, -1)
    ctx.tag(v, -1, "attn_v_dim")
    if ctx.node.kwargs.get("scale", ctx.arg(6)) is None:
        ctx.block(q, -1, "attention scale derived from head size")
    if mask is not None:
        ro, rm = r, ctx.rank(mask)
        ref = [None] * (ro - 3) + [q, q, k]  # batch..., heads, queries, keys
        refd = list(range(ro - 3)) + [ro - 3, ro - 2, ro - 2]
        for i in range(rm):
            j = i + ro - rm
            if j >= 0 and ctx.shape(mask)[i] > 1:
                t = ref[j] if ref[j] is not None else q
                if ctx.shape(t)[refd[j]] == ctx.shape(mask)[i]:
                    ctx.link1(mask, i, t, refd[j])


@rule("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax", "aten._safe_softmax")
def softmax(ctx):
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    dim = ctx.arg(1) % ctx.rank(src)
    for d in range(ctx.rank(src)):
        ctx.link1(src, d, out, d)
    ctx.soft_block(src, dim, "normalised")  # lifted for a router's expert dim (removing = masking with -inf)
