"""Embedding lookup: the embedding width is a channel dim, the vocabulary dim is indexed."""
from . import rule


@rule("aten.embedding")
def embedding(ctx):
    w, ids, out = ctx.tid(ctx.arg(0)), ctx.tid(ctx.arg(1)), ctx.out
    ctx.link1(w, 1, out, -1)
    ctx.tag(w, 1, "embedding")
    ctx.block(w, 0, "indexed")
    if ids is not None:
        for d in range(ctx.rank(ids)):
            ctx.link1(ids, d, out, d)
