"""``einsum``: every index letter is one index space across the operands and the output.

A letter in the output couples the operand dims to the output dim; a letter summed over two or more
operands is a contraction (removing index j removes one term of the sum: a depth-2 coupling, like a
linear layer's input channels); a letter summed within a single operand is a reduction and blocks.
"""
from . import rule


def _spec(eq: str, ranks: list[int]):
    """Letters of each operand and of the output, with '...' expanded to fresh symbols."""
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    ins = lhs.split(",")
    n_ell = max((r - len(s.replace("...", "")) for s, r in zip(ins, ranks) if "..." in s), default=0)
    ell = [f"_{i}" for i in range(n_ell)]

    def expand(s, rank=None):
        if "..." not in s:
            return list(s)
        a, b = s.split("...")
        k = (rank - len(a) - len(b)) if rank is not None else n_ell
        return list(a) + ell[n_ell - k:] + list(b)
    in_letters = [expand(s, r) for s, r in zip(ins, ranks)]
    if not rhs and "->" not in eq:
        seen = [c for letters in in_letters for c in letters]
        rhs_letters = ell + sorted(c for c in set(seen) if seen.count(c) == 1 and not c.startswith("_"))
    else:
        rhs_letters = expand(rhs)
    return in_letters, rhs_letters


@rule("aten.einsum")
def einsum(ctx):
    eq = ctx.arg(0)
    ops = [ctx.tid(t) for t in ctx.arg(1)]
    out = ctx.out
    if any(t is None for t in ops) or out not in ctx._shapes:
        for t in [t for t in ops if t is not None] + ([out] if out in ctx._shapes else []):
            ctx.block_all(t, "einsum over non-tensors")
        return
    ins, outs = _spec(eq, [ctx.rank(t) for t in ops])
    where = {}
    for t, letters in zip(ops, ins):
        for d, c in enumerate(letters):
            where.setdefault(c, []).append((t, d))
    for d, c in enumerate(outs):
        where.setdefault(c, []).append((out, d))
    for c, dims in where.items():
        big = [x for x in dims if ctx.shape(x[0])[x[1]] > 1]
        for x, y in zip(big, big[1:]):
            if ctx.shape(x[0])[x[1]] == ctx.shape(y[0])[y[1]]:
                ctx.link1(x[0], x[1], y[0], y[1])
        in_out = c in outs
        operands = {t for t, _ in dims if t != out}
        if not in_out and len(operands) < 2:
            for t, d in dims:
                ctx.block(t, d, "summed by einsum")
