"""Width attributes: which module attributes carry a width, found by tracing instead of family code.

``trace_widths(model, captured)`` runs the eager model once on the capture's example inputs with

* every ``int`` attribute of every submodule (and every element of an int tuple/list attribute, and
  every int field of a config a module holds) replaced by a *tagged int* that remembers its source
  and how it was combined (a sympy expression: ``self.num_heads * self.head_dim``), and
* every tensor size (``x.shape``, ``x.size()``) replaced by a tagged int marked *dynamic*.

A ``TorchFunctionMode`` records each call that sets a tensor size from such an int (view/reshape/
expand, new tensors, split, narrow, slicing, one_hot, topk, arange, repeat, pad, ...): the output dim
it sets and the expression, or the bare constant when no attribute or tensor size produced it. Each
record is matched to its node in the captured graph (module path, op, output shape, in order).

Given a plan, ``WidthTrace.solve`` returns the attribute values that give every recorded size its
new width (the current size times the kept fraction of each pruned factor of that dim, from the
analysis' factor -> group map). ``WidthTrace.blockers(gid)`` says why a group could not be resized:
a constant size, an attribute the equations cannot determine, or two uses that disagree.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import weakref
from collections import defaultdict
from dataclasses import dataclass, field

import sympy as sp
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture import capture_mode
from .context import packet_name

DYN = sp.Symbol("_dyn")  # any tensor size: recomputed by the pruned model itself


@dataclass(frozen=True)
class Attr:
    """A settable source of an int: ``module.name`` (``index``: element of a tuple/list), or a config
    field read through ``module.config`` (``config=True``; ``module`` holds that config)."""

    module: str
    name: str
    index: int | None = None
    config: bool = False

    def __str__(self):
        base = f"{self.module or '<root>'}{'.config' if self.config else ''}.{self.name}"
        return base + (f"[{self.index}]" if self.index is not None else "")


class Tagged(int):
    """An int that carries a sympy expression of where it came from."""

    expr: sp.Expr

    def __new__(cls, value, expr):
        obj = int.__new__(cls, value)
        obj.expr = expr
        return obj

    def __reduce__(self):  # deepcopy/pickle: a plain int
        return (int, (int(self),))

    def _bin(self, other, op, sop, rev=False):
        if isinstance(other, bool) or not isinstance(other, int):
            return op(int(self), other) if not rev else op(other, int(self))
        a, b = (int(self), int(other)) if not rev else (int(other), int(self))
        ea = self.expr
        eb = other.expr if isinstance(other, Tagged) else sp.Integer(int(other))
        if rev:
            ea, eb = eb, ea
        try:
            v = op(a, b)
        except ZeroDivisionError:
            raise
        return Tagged(v, sop(ea, eb)) if isinstance(v, int) else v

    def __add__(self, o): return self._bin(o, lambda a, b: a + b, lambda a, b: a + b)
    def __radd__(self, o): return self._bin(o, lambda a, b: a + b, lambda a, b: a + b, True)
    def __sub__(self, o): return self._bin(o, lambda a, b: a - b, lambda a, b: a - b)
    def __rsub__(self, o): return self._bin(o, lambda a, b: a - b, lambda a, b: a - b, True)
    def __mul__(self, o): return self._bin(o, lambda a, b: a * b, lambda a, b: a * b)
    def __rmul__(self, o): return self._bin(o, lambda a, b: a * b, lambda a, b: a * b, True)
    def __floordiv__(self, o): return self._bin(o, lambda a, b: a // b, _floordiv)
    def __rfloordiv__(self, o): return self._bin(o, lambda a, b: a // b, _floordiv, True)
    def __mod__(self, o): return self._bin(o, lambda a, b: a % b, lambda a, b: sp.Mod(a, b))
    def __neg__(self): return Tagged(-int(self), -self.expr)
    def __pos__(self): return self
    def __abs__(self): return Tagged(abs(int(self)), self.expr if int(self) >= 0 else -self.expr)
    def __int__(self): return int.__int__(self)
    def __index__(self): return int.__index__(self)
    def __hash__(self): return int.__hash__(self)


def _floordiv(a, b):
    q = a / b
    return q if (q.is_integer or not q.free_symbols and q.is_integer) else sp.floor(q)


def _tag(value: int, expr) -> Tagged:
    return Tagged(int(value), expr)


def _dyn_size(size) -> torch.Size:
    return torch.Size([_tag(s, DYN) for s in size])


@dataclass
class SizeUse:
    """One size argument of one call: ``expr`` (None: a bare constant) sets ``value`` at ``target``.

    ``target``: ("out", k, dim) the size of output ``k``'s dim; ("mul", dim) output / input size
    (repeat, repeat_interleave); ("pad", dim) output - input size."""

    op: str
    module: str
    where: str
    value: int
    expr: sp.Expr | None
    target: tuple
    call: int
    node: str | None = None        # matched graph node name
    out_tids: tuple = ()           # tensor ids of the matched node's outputs
    in_tid: object = None          # tensor id of the matched node's first input


@dataclass
class WidthTrace:
    """The recorded size uses of one model, matched to its captured graph."""

    attrs: dict                  # sympy Symbol -> Attr
    values: dict                 # Attr -> int (value when traced)
    uses: list
    calls: int = 0
    error: str = ""
    unmatched: list = field(default_factory=list)

    def used(self) -> set:
        """The attributes that feed at least one recorded size."""
        syms = set()
        for u in self.uses:
            if u.expr is not None:
                syms |= u.expr.free_symbols
        return {self.attrs[s] for s in syms if s in self.attrs}

    # ---- new sizes from a plan ------------------------------------------------------------------
    # ``dim_groups[(tid, dim)]`` = ((start, size, ((factor size, group id or None), ...)), ...): the
    # segments of a dim (one for an ordinary dim) and the groups their factors belong to.
    @staticmethod
    def _seg_new(row, plan) -> int:
        n = 1
        for size, gid in row:
            n *= len(plan[gid]) if gid is not None and gid in plan else size
        return n

    def _sizes(self, dim_groups, tid, d, plan):
        """(old, new, segmented) size of a dim under ``plan`` (None if the dim is unknown)."""
        segs = dim_groups.get((tid, d))
        if segs is None:
            return None
        old = sum(size for _, size, _ in segs)
        new = sum(self._seg_new(row, plan) for _, _, row in segs)
        return old, new, len(segs) > 1

    def _goal(self, use, dim_groups, plan):
        """How ``use``'s value changes under ``plan``: ("mul", r) or ("add", delta) applied to its
        current value; ("same",) when it does not change; None when it cannot be said."""
        if use.node is None:
            return None
        kind, dim = use.target[0], use.target[-1]
        if kind == "out":
            k = use.target[1]
            if k >= len(use.out_tids):
                return None
            got = self._sizes(dim_groups, use.out_tids[k], dim, plan)
            if got is None:
                return ("same",)
            old, new, segmented = got
            if old == new:
                return ("same",)
            return ("add", new - old) if segmented else ("mul", sp.Rational(new, old))
        if kind == "start":
            segs = dim_groups.get((use.in_tid, dim))
            if segs is None:
                return ("same",)
            starts = [st for st, _, _ in segs]
            if use.value not in starts and use.value != sum(sz for _, sz, _ in segs):
                touched = any(gid in plan for _, _, row in segs for _, gid in row if gid is not None)
                return None if touched else ("same",)
            delta = sum(self._seg_new(row, plan) - size for st, size, row in segs if st < use.value)
            return ("same",) if delta == 0 else ("add", delta)
        if kind in ("mul", "pad") and use.in_tid is not None and use.out_tids:
            go = self._sizes(dim_groups, use.out_tids[0], dim, plan)
            gi = self._sizes(dim_groups, use.in_tid, dim, plan)
            ro = sp.Integer(1) if go is None else sp.Rational(go[1], go[0])
            ri = sp.Integer(1) if gi is None else sp.Rational(gi[1], gi[0])
            if kind == "mul":
                return ("same",) if ro == ri else ("mul", ro / ri)
            return ("same",) if ro == ri == 1 else None
        return None

    def affected(self, dim_groups) -> dict:
        """group id -> indices of the uses whose size changes when that group loses units."""
        out = defaultdict(set)
        for i, u in enumerate(self.uses):
            tids = list(u.out_tids) + ([u.in_tid] if u.in_tid is not None else [])
            for tid in tids:
                for _, _, row in dim_groups.get((tid, u.target[-1]), ()):
                    for _, gid in row:
                        if gid is not None:
                            out[gid].add(i)
        return out

    def solve(self, dim_groups: dict, plan: dict, current: dict | None = None, uses=None):
        """Attribute values for ``plan`` (group id -> kept units): ``(new values, problems)``.

        ``current``: Attr -> current value (after earlier surgery); defaults to the traced values."""
        current = self.values if current is None else current

        class _Cur(dict):  # symbol -> current value, looked up on demand
            def __missing__(d, s):
                a = self.attrs[s]
                d[s] = v = current.get(a, self.values[a])
                return v
        cur_subs = _Cur()

        def at_current(e):
            return _at(e, {x: cur_subs[x] for x in e.free_symbols if x in self.attrs})
        eqs, problems = [], []
        idx = range(len(self.uses)) if uses is None else sorted(uses)
        for i in idx:
            u = self.uses[i]
            if u.expr is not None and DYN in u.expr.free_symbols:
                continue  # recomputed from tensor sizes (checked by re-capture)
            goal = self._goal(u, dim_groups, plan)
            where = f"{u.op} @ {u.module or '<root>'} ({u.where})"
            if goal is None:
                if u.node is None:
                    continue
                problems.append(f"size {u.value} at {where} changes in a way fxprune cannot express")
                continue
            if goal[0] == "same":
                if u.expr is None or not (u.expr.free_symbols & set(self.attrs)):
                    continue
            if u.expr is None:
                if u.value == -1:
                    continue
                problems.append(f"size {u.value} at {where} is a constant: no module attribute or tensor "
                                "size produces it")
                continue
            if DYN in u.expr.free_symbols:
                continue  # recomputed from tensor sizes (checked by re-capture)
            old = at_current(u.expr)
            target = old if goal[0] == "same" else old * goal[1] if goal[0] == "mul" else old + goal[1]
            if not target.is_integer:
                problems.append(f"size {u.value} at {where} would become {target} (not an integer)")
                continue
            eqs.append((u, u.expr, int(target)))
        known = {}
        changed = True
        while changed:
            changed = False
            for u, e, t in eqs:
                free = [s for s in e.free_symbols if s not in known]
                if len(free) != 1:
                    continue
                s = free[0]
                val = _solve1(_at(e, known), s, t)
                if val is None:
                    continue
                known[s] = val
                changed = True
        out, seen_bad = {}, set()
        for u, e, t in eqs:
            free = [s for s in e.free_symbols if s not in known]
            if free:
                # several unknowns: keep them at their current values if that satisfies the equation
                trial = at_current(_at(e, known))
                if trial != t:
                    names = ", ".join(sorted(str(self.attrs[s]) for s in free))
                    key = (names, u.where)
                    if key not in seen_bad:
                        seen_bad.add(key)
                        problems.append(f"cannot tell which of {names} carries size {u.value} -> {t} at "
                                        f"{u.op} @ {u.module or '<root>'} ({u.where})")
                continue
            got = _at(e, known)
            if got != t:
                key = (str(e), u.where)
                if key not in seen_bad:
                    seen_bad.add(key)
                    names = ", ".join(sorted(str(self.attrs[s]) for s in e.free_symbols)) or "a constant"
                    problems.append(f"{names} must give {t} at {u.op} @ {u.module or '<root>'} ({u.where}) but "
                                    f"give {got} (one attribute, two widths)")
        for s, v in known.items():
            a = self.attrs[s]
            if v != cur_subs[s]:
                out[a] = int(v)
        return out, problems



_SUBS_CACHE: dict = {}


def _at(expr, values: dict):
    """``expr`` with the symbols of ``values`` (symbol -> number) replaced: ``expr.subs(values)`` for
    number values, by ``xreplace`` (no pattern matching) and memoised on the expression and the values
    of its own free symbols. Surgery evaluates the same few width expressions in every layer (SmolLM2:
    ~50k evaluations per prune, most of a prune's time with ``subs``)."""
    syms = expr.free_symbols
    if not syms:
        return expr
    hit = tuple(sorted(((x.name, values[x]) for x in syms if x in values), key=lambda kv: kv[0]))
    if not hit:
        return expr
    key = (expr, hit)
    got = _SUBS_CACHE.get(key)
    if got is None:
        if len(_SUBS_CACHE) > 200_000:
            _SUBS_CACHE.clear()
        got = _SUBS_CACHE[key] = expr.xreplace({x: sp.sympify(values[x]) for x in syms if x in values})
    return got


def _solve1(expr, sym, target):
    """Integer ``x`` with ``expr(x) == target`` (None if none or not unique); memoised."""
    key = (expr, sym, int(target))
    if key not in _SOLVE1_CACHE:
        if len(_SOLVE1_CACHE) > 50_000:
            _SOLVE1_CACHE.clear()
        _SOLVE1_CACHE[key] = _solve1_uncached(expr, sym, int(target))
    return _SOLVE1_CACHE[key]


_SOLVE1_CACHE: dict = {}


def _solve1_uncached(expr, sym, target):
    if expr == sym:
        return int(target)
    coeff = expr / sym
    if not coeff.free_symbols:
        v = sp.Rational(target) / coeff
        return int(v) if v.is_integer else None
    if expr.has(sp.floor, sp.ceiling, sp.Mod):  # integer division: search the integers
        f = sp.lambdify(sym, expr, modules="math")
        hits = []
        for x in range(1, 1 << 16):
            try:
                if f(x) == target:
                    hits.append(x)
            except (ZeroDivisionError, ValueError):
                continue
            if len(hits) > 1:
                return None
        return hits[0] if len(hits) == 1 else None
    try:
        sols = sp.solve(sp.Eq(expr, target), sym)
    except Exception:
        return None
    ints = [int(s) for s in sols if getattr(s, "is_integer", False)]
    if len(ints) == 1:
        return ints[0]
    return None


# ---- the trace ------------------------------------------------------------------------------------

_SHAPE_LIST = {"view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "zeros", "ones", "empty",
               "rand", "randn", "broadcast_to", "full", "new_full"}
_PACKETS = {
    "view": {"aten.view", "aten._unsafe_view", "aten.reshape"},
    "reshape": {"aten.reshape", "aten.view", "aten._unsafe_view", "aten.clone"},
    "expand": {"aten.expand"}, "broadcast_to": {"aten.expand", "aten.broadcast_to"},
    "new_zeros": {"aten.new_zeros", "aten.zeros"}, "new_ones": {"aten.new_ones", "aten.ones"},
    "new_empty": {"aten.new_empty", "aten.empty"}, "new_full": {"aten.new_full", "aten.full"},
    "zeros": {"aten.zeros"}, "ones": {"aten.ones"}, "empty": {"aten.empty"}, "full": {"aten.full"},
    "rand": {"aten.rand"}, "randn": {"aten.randn"},
    "unflatten": {"aten.unflatten", "aten.view"}, "narrow": {"aten.narrow", "aten.slice"},
    "split": {"aten.split", "aten.split_with_sizes"}, "split_with_sizes": {"aten.split_with_sizes", "aten.split"},
    "one_hot": {"aten.one_hot"}, "topk": {"aten.topk"}, "arange": {"aten.arange"},
    "repeat": {"aten.repeat"}, "repeat_interleave": {"aten.repeat_interleave"}, "tile": {"aten.tile", "aten.repeat"},
    "pad": {"aten.pad", "aten.constant_pad_nd"},
    "__getitem__": {"aten.slice", "aten.select", "aten.index", "aten.unsqueeze", "aten.alias", "aten.narrow"},
}


def _name(func) -> str:
    return getattr(func, "__name__", "") or str(func)


def _flat_ints(x):
    """Flatten the size-list argument forms: ints, tuples/lists/torch.Size of ints."""
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _has_tag(x) -> bool:
    if isinstance(x, Tagged):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_tag(y) for y in x)
    if isinstance(x, slice):
        return any(_has_tag(y) for y in (x.start, x.stop, x.step))
    if isinstance(x, dict):
        return any(_has_tag(y) for y in x.values())
    return False


def _int_slices(idx) -> bool:
    """An index with a slice bound given as a number (a fixed piece of a dim)."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, slice) and any(isinstance(b, int) and not isinstance(b, bool) and b != 0
                                            for b in (i.start, i.stop)) for i in idx)


def _ex(v):
    """(value, expr or None) of an int argument."""
    if isinstance(v, Tagged):
        return int(v), v.expr
    return int(v), None


def _size_args(name, args, kwargs, result):
    """[(value, expr, target)] for the size arguments of one call."""
    out = []
    tensors = [r for r in (result if isinstance(result, (list, tuple)) else [result]) if isinstance(r, torch.Tensor)]
    if not tensors:
        return out
    rank = tensors[0].dim()
    if name in _SHAPE_LIST:
        rest = list(args[1:]) if name in ("view", "reshape", "expand", "new_zeros", "new_ones", "new_empty",
                                           "new_full", "broadcast_to") else list(args)
        if name in ("full", "new_full"):
            rest = rest[:1]
        if "size" in kwargs:
            rest = [kwargs["size"]]
        if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
            rest = list(rest[0])
        if any(isinstance(x, (torch.dtype, torch.Tensor)) for x in rest) or len(rest) != rank:
            return out
        for d, v in enumerate(rest):
            if isinstance(v, int) and not isinstance(v, bool):
                out.append((*_ex(v), ("out", 0, d)))
    elif name == "unflatten":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        sizes = args[2] if len(args) > 2 else kwargs.get("sizes")
        dim = dim % (rank - len(sizes) + 1)
        for j, v in enumerate(sizes):
            out.append((*_ex(v), ("out", 0, dim + j)))
    elif name == "narrow":
        dim, length = args[1], args[3] if len(args) > 3 else kwargs.get("length")
        start = args[2] if len(args) > 2 else kwargs.get("start", 0)
        out.append((*_ex(length), ("out", 0, dim % rank)))
        if isinstance(start, int) and int(start) > 0:
            out.append((*_ex(start), ("start", dim % rank)))
    elif name in ("split", "split_with_sizes"):
        s = args[1] if len(args) > 1 else kwargs.get("split_size", kwargs.get("split_size_or_sections",
                                                                           kwargs.get("split_sizes")))
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        dim = dim % rank
        if isinstance(s, (list, tuple)):
            for k, v in enumerate(s):
                out.append((*_ex(v), ("out", k, dim)))
        elif isinstance(s, int):
            for k in range(len(tensors)):
                if tensors[k].shape[dim] == int(s):
                    out.append((*_ex(s), ("out", k, dim)))
    elif name == "one_hot":
        n = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        out.append((*_ex(n), ("out", 0, rank - 1)))
    elif name == "topk":
        k = args[1] if len(args) > 1 else kwargs.get("k")
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        for j in range(2):
            out.append((*_ex(k), ("out", j, dim % rank)))
    elif name == "arange":
        ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if len(ints) == 1 or (len(ints) == 2 and int(ints[0]) == 0):
            out.append((*_ex(ints[-1]), ("out", 0, 0)))
    elif name in ("repeat", "tile"):
        sizes = list(args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = list(sizes[0])
        off = rank - len(sizes)
        for j, v in enumerate(sizes):
            if off + j >= 0:
                out.append((*_ex(v), ("mul", off + j)))
    elif name == "repeat_interleave":
        reps = args[1] if len(args) > 1 else kwargs.get("repeats")
        dim = args[2] if len(args) > 2 else kwargs.get("dim")
        if isinstance(reps, int) and dim is not None:
            out.append((*_ex(reps), ("mul", dim % rank)))
    elif name == "pad":
        pads = args[1] if len(args) > 1 else kwargs.get("pad")
        for j, v in enumerate(pads):
            if int(v) != 0 or isinstance(v, Tagged) and DYN not in v.expr.free_symbols:
                out.append((*_ex(v), ("pad", rank - 1 - j // 2)))
    elif name == "__getitem__":
        idx = args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        src = args[0]
        d_in, d_out = 0, 0
        if any(i is Ellipsis for i in idx):
            n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
            pos = idx.index(Ellipsis)
            idx = idx[:pos] + (slice(None),) * (src.dim() - n_real) + idx[pos + 1:]
        for i in idx:
            if i is None:
                d_out += 1
                continue
            if isinstance(i, slice):
                if (i.start is not None or i.stop is not None) and (i.step is None or int(i.step) == 1):
                    n = _tag(src.shape[d_in], DYN)  # the end of the dim: whatever width it has then
                    start = 0 if i.start is None else i.start
                    stop = n if i.stop is None else i.stop
                    if isinstance(start, int) and isinstance(stop, int) and int(start) >= 0 and int(stop) >= 0:
                        stop = stop if int(stop) <= int(n) else n
                        out.append((*_ex(stop - start), ("out", 0, d_out)))
                        if int(start) > 0:
                            out.append((*_ex(start), ("start", d_in)))
                d_in += 1
                d_out += 1
            elif isinstance(i, int):
                d_in += 1
            else:
                return out
    return out


class _Recorder(TorchFunctionMode):
    def __init__(self, trace, stack, skip_files, installed=None, modules=None):
        super().__init__()
        self.trace, self.stack, self.skip = trace, stack, skip_files
        self.installed, self.modules = installed, modules or {}
        self.call = 0

    def _localize(self, expr):
        if expr is None or self.installed is None or not self.installed.config_of:
            return expr
        subs = {x: self.installed.local(x, self.stack, self.modules) for x in expr.free_symbols
                if x in self.installed.config_of}
        subs = {k: v for k, v in subs.items() if k != v}
        return expr.subs(subs) if subs else expr

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") == "shape":
            return _dyn_size(func(*args, **kwargs))
        if name in ("size", "__len__", "numel") and len(args) >= 1 and isinstance(args[0], torch.Tensor):
            r = func(*args, **kwargs)
            return _tag(r, DYN) if isinstance(r, int) else _dyn_size(r)
        result = func(*args, **kwargs)
        self.call += 1
        if name in _PACKETS and (_has_tag(args) or _has_tag(kwargs) or name in ("view", "reshape", "expand")
                                 or (name == "__getitem__" and _int_slices(args[1]))):
            try:
                found = _size_args(name, args, kwargs, result)
            except Exception:
                found = []
            if found:
                where = self._where()
                module = self.stack[-1] if self.stack else ""
                for value, expr, target in found:
                    self.trace.uses.append(SizeUse(name, module, where, value, self._localize(expr), target,
                                                   self.call))
                self.trace._shapes[self.call] = [tuple(r.shape) for r in
                                                 (result if isinstance(result, (list, tuple)) else [result])
                                                 if isinstance(r, torch.Tensor)]
                self.trace._in_shape[self.call] = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
        return result

    def _where(self) -> str:
        f = sys._getframe(2)
        while f is not None:
            fn = f.f_code.co_filename
            if not any(s in fn for s in self.skip):
                return f"{os.path.basename(fn)}:{f.f_lineno}"
            f = f.f_back
        return "?"


def _config_fields(cfg):
    for k, v in list(vars(cfg).items()):
        if isinstance(v, bool) or k.startswith("_"):
            continue
        if isinstance(v, int):
            yield k, None, v
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            for i, x in enumerate(v):
                yield k, i, x


def _module_fields(mod):
    for k, v in list(vars(mod).items()):
        if k.startswith("_") or k == "training" or isinstance(v, bool):
            continue
        if isinstance(v, int):
            yield k, None, v
        elif isinstance(v, (list, tuple)) and v and len(v) <= 64 and \
                all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            yield k, "seq", v


class _Installed:
    """Tagged ints installed on modules and configs; ``restore`` puts the originals back."""

    def __init__(self, model):
        self.saved, self.attrs, self.values = [], {}, {}
        self.config_of = {}  # config symbol -> the config object it was read from
        configs = {}
        for path, mod in model.named_modules():
            for k, kind, v in _module_fields(mod):
                if kind == "seq":
                    new = []
                    for i, x in enumerate(v):
                        new.append(self._sym(Attr(path, k, i), x))
                    self._set(mod, k, type(v)(new) if not isinstance(v, torch.Size) else tuple(new), v)
                else:
                    self._set(mod, k, self._sym(Attr(path, k), v), v)
            cfg = vars(mod).get("config")
            if cfg is not None and hasattr(cfg, "to_dict") and id(cfg) not in configs:
                configs[id(cfg)] = (path, cfg)
        for path, cfg in configs.values():
            seqs = defaultdict(dict)
            for k, i, v in _config_fields(cfg):
                if i is None:
                    self._set(cfg, k, self._sym(Attr(path, k, config=True), v, cfg), v)
                else:
                    seqs[k][i] = self._sym(Attr(path, k, i, config=True), v, cfg)
            for k, items in seqs.items():
                old = getattr(cfg, k)
                self._set(cfg, k, type(old)(items[i] for i in range(len(old))), old)

    def _sym(self, attr, value, cfg=None):
        s = sp.Symbol(f"a{len(self.attrs)}", integer=True)
        self.attrs[s] = attr
        self.values[attr] = int(value)
        if cfg is not None:
            self.config_of[s] = cfg
        return _tag(value, s)

    def local(self, s, stack, modules):
        """The symbol of config field ``s`` as read by the innermost module on ``stack`` that holds
        that config (so per-layer widths read from a shared config get per-layer attributes)."""
        cfg = self.config_of.get(s)
        if cfg is None:
            return s
        for path in reversed(stack):
            if vars(modules[path]).get("config") is cfg:
                a = self.attrs[s]
                key = Attr(path, a.name, a.index, config=True)
                if key == a:
                    return s
                for t, b in self.attrs.items():  # (few config fields are read per module)
                    if b == key:
                        return t
                t = sp.Symbol(f"a{len(self.attrs)}", integer=True)
                self.attrs[t] = key
                self.values[key] = self.values[a]
                return t
        return s

    def _set(self, obj, k, new, old):
        try:
            object.__setattr__(obj, k, new) if isinstance(obj, nn.Module) else obj.__dict__.__setitem__(k, new)
            self.saved.append((obj, k, old))
        except Exception:
            pass

    def restore(self):
        for obj, k, old in reversed(self.saved):
            if isinstance(obj, nn.Module):
                object.__setattr__(obj, k, old)
            else:
                obj.__dict__[k] = old


_SKIP = (os.sep + "torch" + os.sep, os.path.join("fxprune", "analysis", "widths.py"))


@contextlib.contextmanager
def _export_flags():
    """Run eager code down the path ``torch.export`` takes (models branch on ``is_exporting()``)."""
    c = torch.compiler
    old = (getattr(c, "_is_compiling_flag", False), getattr(c, "_is_exporting_flag", False))
    c._is_compiling_flag, c._is_exporting_flag = True, True
    try:
        yield
    finally:
        c._is_compiling_flag, c._is_exporting_flag = old


def trace_widths(model: nn.Module, captured, args=(), kwargs=None) -> WidthTrace:
    """Record the size uses of one eager forward of ``model`` and match them to ``captured``."""
    trace = WidthTrace({}, {}, [])
    trace._shapes, trace._in_shape = {}, {}
    names = {id(m): n for n, m in model.named_modules()}
    stack = []

    def pre(mod, a):
        stack.append(names.get(id(mod), stack[-1] if stack else ""))

    def post(mod, a, out):
        if stack:
            stack.pop()

    if kwargs is None and not args:
        from ..capture import example_inputs
        kwargs = example_inputs(model)
    was_training = model.training
    model.eval()
    inst = _Installed(model)
    trace.attrs, trace.values = inst.attrs, inst.values
    h1 = nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = nn.modules.module.register_module_forward_hook(post, always_call=True)
    rec = _Recorder(trace, stack, _SKIP, inst, dict(model.named_modules()))
    try:
        with torch.no_grad(), capture_mode(model), _export_flags(), rec:
            model(*args, **(kwargs or {}))
    except Exception as e:
        trace.error = f"{type(e).__name__}: {e}"
    finally:
        h1.remove()
        h2.remove()
        inst.restore()
        model.train(was_training)
    trace.calls = rec.call
    # bare constants of view/reshape/expand are only interesting where no attribute was involved;
    # keep them (the solver reports them only when their width would change)
    _match(trace, captured)
    del trace._shapes, trace._in_shape
    return trace


def _out_tids(node):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return (node.name,), [tuple(int(s) for s in val.shape)]
    if isinstance(val, (list, tuple)):
        tids, shapes = [], []
        for i, v in enumerate(val):
            if isinstance(v, torch.Tensor):
                tids.append((node.name, i))
                shapes.append(tuple(int(s) for s in v.shape))
        return tuple(tids), shapes
    return (), []


def _match(trace: WidthTrace, captured) -> None:
    """Give each use its graph node: same module, compatible op, same output shapes, in order."""
    from torch import fx
    by_module = defaultdict(list)
    for node in captured.graph.nodes:
        if node.op == "call_function":
            by_module[captured.module_of(node)].append(node)
    pos = defaultdict(int)
    by_call = defaultdict(list)
    for u in trace.uses:
        by_call[u.call].append(u)
    for call in sorted(by_call):
        us = by_call[call]
        u0 = us[0]
        shapes = trace._shapes.get(call, [])
        nodes = by_module.get(u0.module, [])
        want = _PACKETS.get(u0.op, set())
        hit = None
        for j in range(pos[u0.module], len(nodes)):
            n = nodes[j]
            if packet_name(n.target) not in want:
                continue
            tids, got = _out_tids(n)
            if got == shapes or (u0.op == "topk" and got[:1] == shapes[:1]):
                hit = j
                break
        if hit is None:
            trace.unmatched.extend(us)
            continue
        pos[u0.module] = hit + 1
        n = nodes[hit]
        tids, _ = _out_tids(n)
        src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
        in_tid = src.name if src is not None and isinstance(src.meta.get("val"), torch.Tensor) else None
        for u in us:
            u.node, u.out_tids, u.in_tid = n.name, tids, in_tid


def current_values(model: nn.Module, trace: WidthTrace) -> dict:
    """Attr -> the value the model holds now (attributes may have been changed by earlier surgery)."""
    out = {}
    mods = dict(model.named_modules())
    for a in trace.values:
        mod = mods.get(a.module)
        if mod is None:
            continue
        obj = getattr(mod, "config", None) if a.config else mod
        v = getattr(obj, a.name, None) if obj is not None else None
        if a.index is not None and isinstance(v, (list, tuple)) and a.index < len(v):
            v = v[a.index]
        if isinstance(v, int) and not isinstance(v, bool):
            out[a] = int(v)
    return out


def apply_values(model: nn.Module, new: dict) -> dict:
    """Set ``new`` (Attr -> int) on ``model``; returns {module path: {attr: value}} of module attributes.

    A config field gets a private copy of the config on the module that holds it (other layers keep
    theirs), unless every holder of that config gets the same value."""
    mods = dict(model.named_modules())
    done = defaultdict(dict)
    by_cfg = defaultdict(dict)
    for a, v in new.items():
        mod = mods[a.module]
        if a.config:
            by_cfg[a.module][(a.name, a.index)] = v
            continue
        if a.index is None:
            setattr(mod, a.name, v)
            done[a.module][a.name] = v
        else:
            seq = list(getattr(mod, a.name))
            seq[a.index] = v
            old = getattr(mod, a.name)
            setattr(mod, a.name, type(old)(seq) if not isinstance(old, torch.Size) else tuple(seq))
            done[a.module][a.name] = getattr(mod, a.name)
    for path, fields in by_cfg.items():
        mod = mods[path]
        cfg = copy.copy(mod.config) if mod.config is getattr(model, "config", None) else mod.config
        for (name, index), v in fields.items():
            if index is None:
                cfg.__dict__[name] = v
            else:
                seq = list(getattr(cfg, name))
                seq[index] = v
                cfg.__dict__[name] = type(getattr(cfg, name))(seq)
        setattr(mod, "config", cfg)
    return dict(done)


# ---- construction: which config fields give which parameter shapes ---------------------------------

_FACTORIES = {"empty", "zeros", "ones", "rand", "randn", "full", "arange", "tensor_placeholder"}


class _ShapeRecorder(TorchFunctionMode):
    """Shapes (as expressions) of the tensors created while a model is constructed."""

    def __init__(self):
        super().__init__()
        self.exprs = {}  # id(tensor) -> tuple of expressions (None: a constant)
        self.alive = []  # keeps every recorded tensor alive, so ids are never reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        result = func(*args, **kwargs)
        if not isinstance(result, torch.Tensor):
            return result
        self.alive.append(result)
        if name in ("empty", "zeros", "ones", "rand", "randn", "full"):
            size = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else \
                (args[:1] if name == "full" else args)
            if name == "full" and isinstance(args[0], (list, tuple)):
                size = args[0]
            size = kwargs.get("size", size)
            if isinstance(size, (list, tuple)) and len(size) == result.dim():
                self.exprs[id(result)] = tuple(s.expr if isinstance(s, Tagged) else None for s in size)
        elif name == "arange":
            ints = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if ints and any(isinstance(a, Tagged) for a in ints):
                start, end, step = (0, ints[0], 1) if len(ints) == 1 else (ints + [1])[:3]
                e = lambda v: v.expr if isinstance(v, Tagged) else sp.Integer(v) if isinstance(v, int) else None  # noqa: E731
                if None not in (e(start), e(end), e(step)):
                    self.exprs[id(result)] = ((e(end) - e(start)) / e(step),)
        elif name == "_make_subclass" and len(args) >= 2 and id(args[1]) in self.exprs:
            self.exprs[id(result)] = self.exprs[id(args[1])]
        elif args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.exprs and \
                name in ("float", "to", "__truediv__", "__rtruediv__", "__mul__", "__rmul__", "__pow__",
                         "__rpow__", "exp", "log", "neg", "__neg__", "clone", "type_as", "__add__", "__sub__"):
            if result.shape == args[0].shape:
                self.exprs[id(result)] = self.exprs[id(args[0])]
        return result


def _tag_config(cfg, syms: dict, values: dict, prefix: str = "") -> None:
    for k, i, v in list(_config_fields(cfg)):
        name = prefix + k
        if i is None:
            s = sp.Symbol(f"c{len(syms)}", integer=True)
            syms[s] = (name, None)
            values[(name, None)] = int(v)
            cfg.__dict__[k] = _tag(v, s)
        else:
            old = getattr(cfg, k)
            if isinstance(old, list) and not all(isinstance(x, Tagged) for x in old):
                pass
            s = sp.Symbol(f"c{len(syms)}", integer=True)
            syms[s] = (name, i)
            values[(name, i)] = int(v)
            seq = list(cfg.__dict__[k])
            seq[i] = _tag(v, s)
            cfg.__dict__[k] = type(old)(seq)
    for k, v in list(vars(cfg).items()):
        if hasattr(v, "to_dict") and not prefix:
            _tag_config(v, syms, values, prefix=k + ".")


@dataclass(frozen=True)
class BuildEq:
    """How the stock config builds one width: ``expr`` (of config fields) gives ``value`` (what the
    model holds now) for ``kind`` 'param'/'buffer' (dim ``dim`` of ``name``) or 'attr' (``module.name``)."""

    kind: str
    module: str
    name: str
    dim: int | None
    expr: sp.Expr
    value: int

    def __str__(self):
        where = f"{self.module}.{self.name}" if self.module else self.name
        return where + (f" dim {self.dim}" if self.dim is not None else "")


_BUILD_CACHE = weakref.WeakKeyDictionary()


def _build_exprs(model: nn.Module):
    """(symbols, [(kind, module, name, dim, expr)]) of ``model``'s construction, traced once per model."""
    key = _config_key(model.config)
    hit = _BUILD_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    cfg = copy.deepcopy(model.config)
    syms, values = {}, {}
    _tag_config(cfg, syms, values)
    rec = _ShapeRecorder()
    wrapped = []
    for cls in (nn.Parameter, getattr(nn, "Buffer", None)):
        if cls is None or "__new__" not in vars(cls):
            continue
        orig = vars(cls)["__new__"]

        def new(c, data=None, *a, _orig=orig, **k):
            p = _orig(c, data, *a, **k)
            if data is not None and id(data) in rec.exprs:
                rec.exprs[id(p)] = rec.exprs[id(data)]
                rec.alive.append(p)
            return p
        wrapped.append((cls, orig))
        cls.__new__ = staticmethod(new)
    missing = set()
    base_cls = type(cfg)

    def _getattr(self, name, _missing=missing):
        if not name.startswith("_"):
            _missing.add(name)
        raise AttributeError(name)
    try:
        cfg.__class__ = type(base_cls.__name__, (base_cls,), {"__getattr__": _getattr})
    except TypeError:
        pass
    try:
        with torch.device("meta"), rec:
            fresh = type(model)(cfg)
    except Exception:
        return None
    finally:
        for cls, orig in wrapped:
            cls.__new__ = orig
        cfg.__class__ = base_cls
    rows = []
    tensors = [("param", n, t) for n, t in fresh.named_parameters(remove_duplicate=False)] + \
        [("buffer", n, t) for n, t in fresh.named_buffers(remove_duplicate=False)]
    for kind, name, t in tensors:
        ex = rec.exprs.get(id(t))
        if ex is None:
            continue
        mod, _, leaf = name.rpartition(".")
        for d, e in enumerate(ex):
            if e is not None and e.free_symbols:
                rows.append((kind, mod, leaf, d, e))
    for path, fm in fresh.named_modules():
        for k, v in vars(fm).items():
            if isinstance(v, Tagged) and v.expr.free_symbols and not k.startswith("_"):
                rows.append(("attr", path, k, None, v.expr))
    rows.append(("missing", "", "", None, frozenset(missing)))
    _BUILD_CACHE[model] = (key, (syms, rows))
    return syms, rows


def missing_config_reads(model: nn.Module) -> set:
    """Config attributes the model's constructor asked for that the config does not have (read
    with ``getattr(config, name, default)``): fields a patched config may add."""
    got = _build_exprs(model)
    if got is None:
        return set()
    return set(next((r[4] for r in got[1] if r[0] == "missing"), ()))


def _config_key(config) -> str:
    return repr(sorted((k, repr(v)) for k, v in vars(config).items()))


def _field_values(config, syms) -> dict:
    """symbol -> the current value of its config field."""
    out = {}
    for s, (name, index) in syms.items():
        obj, key = config, name
        if "." in name:
            sub, key = name.split(".", 1)
            obj = getattr(config, sub, None)
        v = getattr(obj, key, None)
        if index is not None:
            v = v[index] if isinstance(v, (list, tuple)) and index < len(v) else None
        if isinstance(v, int) and not isinstance(v, bool):
            out[s] = int(v)
    return out


def construction_equations(model: nn.Module):
    """How the stock config builds ``model``'s widths: ``(symbols, values, equations)`` with
    symbols -> (config field, index), values -> symbol -> current field value, and ``BuildEq``s for
    every parameter/buffer dim and int module attribute whose constructed value is an expression of
    config fields (traced on the meta device, once per model). None if construction fails."""
    got = _build_exprs(model)
    if got is None:
        return None
    syms, rows = got
    have = {("param",) + tuple(n.rpartition(".")[::2]): t for n, t in model.named_parameters(remove_duplicate=False)}
    have.update({("buffer",) + tuple(n.rpartition(".")[::2]): t for n, t in model.named_buffers(remove_duplicate=False)})
    mods = dict(model.named_modules())
    eqs = []
    for kind, mod, name, dim, e in rows:
        if kind == "missing":
            continue
        if kind == "attr":
            mm = mods.get(mod)
            cur = vars(mm).get(name) if mm is not None else None
            if isinstance(cur, int) and not isinstance(cur, bool):
                eqs.append(BuildEq(kind, mod, name, None, e, int(cur)))
        else:
            t = have.get((kind, mod, name))
            if t is not None and dim < t.dim():
                eqs.append(BuildEq(kind, mod, name, dim, e, int(t.shape[dim])))
    values = _field_values(model.config, syms)
    return syms, values, eqs


def solve_fields(eqs, current: dict):
    """Field values (symbol -> int) satisfying every ``BuildEq`` in ``eqs``, changing as few fields
    as possible from ``current`` (symbol -> int); None when none exists."""
    known = {}
    progress = True
    while progress:  # equations with one undetermined field determine it
        progress = False
        for q in eqs:
            free = [x for x in q.expr.free_symbols if x not in known]
            if len(free) != 1:
                continue
            v = _solve1(_at(q.expr, known), free[0], q.value)
            if v is None:  # no or several integer solutions: other equations may decide
                continue
            known[free[0]] = v
            progress = True
    assign = {**current, **known}
    unsat = [q for q in eqs if _at(q.expr, assign) != q.value]
    for _ in range(len(current)):  # several undetermined fields in one equation: change the fewest
        if not unsat:
            break
        best = None
        for q in unsat:
            e = q.expr
            for x in e.free_symbols - set(known):
                v = _solve1(_at(e, {y: assign[y] for y in e.free_symbols if y != x}), x, q.value)
                if v is None:
                    continue
                trial = {**assign, x: v}
                n_bad = sum(1 for q2 in eqs if _at(q2.expr, trial) != q2.value)
                if best is None or n_bad < best[0]:
                    best = (n_bad, x, v)
        if best is None or best[0] >= len(unsat):
            return None
        assign[best[1]] = best[2]
        known[best[1]] = best[2]
        unsat = [q for q in eqs if _at(q.expr, assign) != q.value]
    return None if unsat else assign


def scope_of(path: str) -> str:
    """The repeated block a module lies in ('model.layers.3' for 'model.layers.3.mlp.up_proj'), '' if none."""
    parts = path.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ""


def stale_attributes(model: nn.Module, trusted: set, scopes: set) -> dict:
    """Module attributes the forward never reads but the constructor derives from the same config
    fields as trusted widths (parameter shapes, attributes the forward reads, standard layers'
    attributes): the values they must take (``{(module path, name): value}``) in ``scopes``. Each is
    solved from the trusted widths of its own module subtree, so per-layer widths are fine."""
    got = construction_equations(model)
    if got is None:
        return {}
    syms, cur, eqs = got
    out = {}
    sure = [q for q in eqs if q.kind != "attr" or (q.module, q.name) in trusted]
    for q in eqs:
        if q.kind != "attr" or (q.module, q.name) in trusted or scope_of(q.module) not in scopes:
            continue
        sub = [e for e in sure if e.module == q.module or e.module.startswith(q.module + ".")]
        if not sub:
            continue
        assign = solve_fields(sub, cur)
        if assign is None:
            continue
        v = _at(q.expr, assign)
        if v.is_integer and int(v) != q.value:
            out[(q.module, q.name)] = int(v)
    return out


def solve_config(model: nn.Module) -> dict | None:
    """Config field values ((name, index) -> int) under which the stock config builds ``model``'s
    shapes and attributes ({} when nothing changes; None when no such values exist)."""
    got = construction_equations(model)
    if got is None:
        return None
    syms, cur, eqs = got
    assign = solve_fields(eqs, cur)
    if assign is None:
        return None
    return {syms[x]: int(v) for x, v in assign.items() if v != cur[x]}
