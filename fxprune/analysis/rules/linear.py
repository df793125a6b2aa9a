"""Matrix products: linear, mm, addmm (GPT-2 Conv1D), matmul, bmm.

Weight dims are tagged ``producer`` (they create output channels) or ``consumer`` (they read input
channels); batch dims of a batched product are tagged ``matmul_batch`` (attention heads in the
explicit matmul-softmax-matmul form).
"""
from . import rule


def _lead(ctx, a, out, n_lead):
    for d in range(n_lead):
        ctx.link1(a, d, out, d)


@rule("aten.linear")
def linear(ctx):
    x, w, b = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1)), ctx.tid(ctx.arg(2, "bias"))
    out = ctx.out
    _lead(ctx, x, out, ctx.rank(x) - 1)
    ctx.link1(x, -1, w, 1)
    ctx.link1(out, -1, w, 0)
    ctx.tag(w, 0, "producer")
    ctx.tag(w, 1, "consumer")
    if b is not None:
        ctx.link1(out, -1, b, 0)
        ctx.tag(b, 0, "producer")


def _mm(ctx, a, b, out):
    ctx.link1(a, 0, out, 0)
    ctx.link1(a, 1, b, 0)
    ctx.link1(b, 1, out, 1)
    ctx.tag(b, 0, "consumer")
    ctx.tag(b, 1, "producer")


@rule("aten.mm")
def mm(ctx):
    _mm(ctx, ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1)), ctx.out)


@rule("aten.addmm")
def addmm(ctx):
    bias, a, b = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1)), ctx.tid(ctx.arg(2))
    _mm(ctx, a, b, ctx.out)
    if bias is not None:
        ctx.link_broadcast(bias, ctx.out)
        if ctx.rank(bias) == 1:
            ctx.tag(bias, 0, "producer")


@rule("aten.matmul", "aten.bmm")
def matmul(ctx):
    a, b, out = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1)), ctx.out
    ra, rb, ro = ctx.rank(a), ctx.rank(b), ctx.rank(out)
    if ra < 2 or rb < 2:
        for t in (a, b, out):
            ctx.block_all(t, "vector matmul")
        return
    ctx.link1(a, -1, b, -2)
    ctx.link1(a, -2, out, -2)
    ctx.link1(b, -1, out, -1)
    for t, r in ((a, ra), (b, rb)):
        for i in range(r - 2):
            j = i + (ro - r)
            if ctx.shape(t)[i] == ctx.shape(out)[j] and ctx.shape(t)[i] > 1:
                ctx.link1(t, i, out, j)
    for j in range(ro - 2):
        ctx.tag(out, j, "matmul_batch")
    if a in ctx.from_param:  # W @ x with W (rows of) a parameter, e.g. experts gathered per token
        ctx.tag(a, -2, "producer")
        ctx.tag(a, -1, "consumer")
        return
    if b in ctx.from_param:  # x @ W
        ctx.tag(b, -2, "consumer")
        ctx.tag(b, -1, "producer")
        return
    if ra >= 3 and rb >= 3:  # activation x activation: attention scores / context
        ctx.tag(a, -1, "matmul_inner")
        ctx.tag(b, -1, "matmul_cols")
        ctx.tag(out, -1, "matmul_cols")
    if rb == 2:  # x @ W
        ctx.tag(b, 0, "consumer")
        ctx.tag(b, 1, "producer")
    elif ra == 2:  # W @ x (Mamba's dt_proj on the slow path)
        ctx.tag(a, 0, "producer")
        ctx.tag(a, 1, "consumer")


@rule("aten.baddbmm", "aten.addbmm")
def baddbmm(ctx):
    """``beta * input + alpha * (a @ b)``: a batched product plus a broadcast term (ALiBi biases)."""
    bias, a, b, out = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1)), ctx.tid(ctx.arg(2)), ctx.out
    if bias is not None:
        ctx.link_broadcast(bias, out)
    ra, rb = ctx.rank(a), ctx.rank(b)
    ctx.link1(a, -1, b, -2)
    ctx.link1(a, -2, out, -2)
    ctx.link1(b, -1, out, -1)
    if ctx.op.startswith("aten.baddbmm"):
        ctx.link1(a, 0, out, 0)
        ctx.link1(b, 0, out, 0)
        ctx.tag(out, 0, "matmul_batch")
        ctx.tag(a, -1, "matmul_inner")
        ctx.tag(b, -1, "matmul_cols")
        ctx.tag(out, -1, "matmul_cols")
    else:
        ctx.block(a, 0, "summed over the batch")
        ctx.block(b, 0, "summed over the batch")
