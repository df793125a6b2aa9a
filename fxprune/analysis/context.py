"""What an op rule sees: one node, the shapes of its tensors, and the axis graph to state facts in."""
from __future__ import annotations

import operator

import torch
from torch import fx

from .axes import AxisGraph


def op_name(target) -> str:
    """'aten.linear.default' for ATen overloads, 'getitem' for operator.getitem, else a repr."""
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # "aten.linear.default"
    name = str(target)
    return name[len("torch.ops."):] if name.startswith("torch.ops.") else getattr(target, "__name__", name)


def packet_name(target) -> str:
    """'aten.linear' for 'aten.linear.default'."""
    name = op_name(target)
    return name.rsplit(".", 1)[0] if name.count(".") >= 2 else name


class RuleContext:
    """Facts about ``node`` for a rule; ``why`` names the op and module for every statement."""

    def __init__(self, ag: AxisGraph, node: fx.Node, module: str, shapes: dict, index_space: dict | None = None,
                 from_param: set | None = None, constants: dict | None = None):
        self.ag, self.node, self.module, self._shapes = ag, node, module, shapes
        self.constants = {} if constants is None else constants  # tid -> small constant tensor (its values)
        self.index_space = {} if index_space is None else index_space  # tid -> Dim its values index
        self.from_param = set() if from_param is None else from_param  # tids that are (rows of) parameters
        self.op = op_name(node.target)
        self.why = f"{self.op} @ {module or '<root>'}"

    # tensors -----------------------------------------------------------------------------------
    @property
    def out(self):
        return self.node.name

    def tid(self, arg):
        """Tensor id of ``arg`` if it is a tensor-valued node, else ``None``."""
        if isinstance(arg, fx.Node) and arg.name in self._shapes:
            return arg.name
        return None

    def shape(self, tid) -> tuple:
        return self._shapes[tid]

    def rank(self, tid) -> int:
        return len(self._shapes[tid])

    def arg(self, i, name=None, default=None):
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    def tensor_args(self) -> list:
        flat = []
        for a in list(self.node.args) + list(self.node.kwargs.values()):
            if isinstance(a, (list, tuple)):
                flat.extend(a)
            else:
                flat.append(a)
        return [t for t in (self.tid(a) for a in flat) if t is not None]

    def virtual(self, suffix: str, size: int, block: str | None = None, tag: str | None = None):
        """A pseudo-tensor of shape (size,): a selector over pieces (slice/cat/split) or a GQA repeat."""
        tid = (self.node.name, suffix)
        self._shapes[tid] = (size,)
        self.ag.add_tensor(tid, (size,))
        if block:
            self.ag.block((tid, 0), f"{block} by {self.why}")
        if tag:
            self.ag.tag((tid, 0), tag)
        return tid

    # statements ---------------------------------------------------------------------------------
    def link(self, a: list, b: list, why: str | None = None):
        self.ag.link(list(a), list(b), why or self.why)

    def link1(self, ta, da, tb, db):
        self.link([(ta, da % self.rank(ta))], [(tb, db % self.rank(tb))])

    def block(self, tid, d, reason: str):
        self.ag.block((tid, d % self.rank(tid)), f"{reason} by {self.why}")

    def soft_block(self, tid, d, reason: str):
        self.ag.soft_block((tid, d % self.rank(tid)), f"{reason} by {self.why}")

    def block_all(self, tid, reason: str):
        for d in range(self.rank(tid)):
            self.block(tid, d, reason)

    def tag(self, tid, d, tag: str):
        self.ag.tag((tid, d % self.rank(tid)), tag)

    def link_broadcast(self, src, dst):
        """Right-aligned broadcasting: equal-size dims of ``src`` link to ``dst``; size-1 dims don't."""
        rs, rd = self.rank(src), self.rank(dst)
        for i in range(rs):
            j = i + rd - rs
            if j >= 0 and self.shape(src)[i] == self.shape(dst)[j] and self.shape(src)[i] > 1:
                self.link([(src, i)], [(dst, j)])


def _size(s) -> int:
    """A dim's size; a size known only at run time (rows picked by a data-dependent mask, an
    unbacked symbol) counts as 1: no channel couples or blocks through it (the op that selected
    the rows blocks its source dim)."""
    try:
        return int(s)
    except Exception:  # torch's GuardOnDataDependentSymNode and friends
        return 1


def shapes_of(node: fx.Node) -> dict:
    """Tensor id -> shape for the outputs of ``node`` (tuples give ids (name, i))."""
    val = node.meta.get("val")
    out = {}
    if isinstance(val, torch.Tensor):
        out[node.name] = tuple(_size(s) for s in val.shape)
    elif isinstance(val, (list, tuple)):
        for i, v in enumerate(val):
            if isinstance(v, torch.Tensor):
                out[(node.name, i)] = tuple(_size(s) for s in v.shape)
    return out
