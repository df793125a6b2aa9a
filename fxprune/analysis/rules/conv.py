"""Convolutions: dense (like linear on the channel dim) and depthwise (channel-wise, one group each)."""
from . import rule


@rule("aten.conv1d", "aten.conv2d", "aten.convolution", "aten._convolution")
def conv(ctx):
    x, w = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1))
    b = ctx.tid(ctx.arg(2))
    out = ctx.out
    groups = ctx.arg(8) if ctx.op.startswith(("aten.convolution", "aten._convolution")) else ctx.arg(6, "groups", 1)
    groups = groups or 1
    transposed = ctx.op.startswith(("aten.convolution", "aten._convolution")) and bool(ctx.arg(6))
    cin, cout = ctx.shape(x)[1], ctx.shape(out)[1]
    if ctx.rank(x) == ctx.rank(out):
        ctx.link1(x, 0, out, 0)
    for t in (x, out):
        for d in range(2, ctx.rank(t)):
            ctx.block(t, d, "convolved")
    if transposed:
        for t in (x, w, out):
            ctx.block_all(t, "transposed convolution")
        return
    if groups == 1:
        ctx.link1(x, 1, w, 1)
        ctx.link1(out, 1, w, 0)
        ctx.tag(w, 0, "producer")
        ctx.tag(w, 1, "consumer")
        if b is not None:
            ctx.link1(out, 1, b, 0)
    elif groups == cin == cout and ctx.shape(w)[1] == 1:
        ctx.link1(x, 1, w, 0)
        ctx.link1(out, 1, w, 0)
        ctx.tag(w, 0, "depthwise")
        if b is not None:
            ctx.link1(out, 1, b, 0)
    else:
        for t in (x, w, out):
            ctx.block_all(t, "grouped convolution")
    for d in range(2, ctx.rank(w)):
        ctx.block(w, d, "kernel")
