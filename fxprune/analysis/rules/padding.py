"""Constant padding (``F.pad``): unpadded dims pass through; a padded dim changes size and blocks."""
from . import rule


@rule("aten.constant_pad_nd", "aten.pad")
def pad(ctx):
    src, out = ctx.tid(ctx.arg(0)), ctx.out
    r = ctx.rank(src)
    pads = list(ctx.arg(1, "pad", []) or [])
    padded = set()
    for i in range(0, len(pads), 2):  # pairs from the last dim backwards
        if pads[i] or (i + 1 < len(pads) and pads[i + 1]):
            padded.add(r - 1 - i // 2)
    for d in range(r):
        if d in padded:
            ctx.block(src, d, "padded")
            ctx.block(out, d, "padded")
        else:
            ctx.link1(src, d, out, d)
