"""The axis graph: tensor dimensions, their factorisation, and the couplings between them.

Op rules (``fxprune/analysis/rules``) only make *local* statements about one node:

* ``link(a, b)``: the row-major flattening of dims ``a`` equals the flattening of dims ``b``, index
  for index (a view merging two dims, a linear layer's feature dim and its weight's dim, ...);
* ``block(dim, why)``: this dim may not lose channels (a reduction over it, a buffer, the model output);
* ``tag(dim, tag)``: a fact used to classify groups (``producer``, ``attn_head``, ``broadcast``...);
* ``soft_block(dim, why)``: a block lifted when the dim's group indexes experts (router softmax/top-k).

The solve is global and has two phases. (1) *Refinement*: every dim carries a list of factor sizes
(576 -> [9, 64] once a view splits it into heads); a link forces both sides onto their common
refinement, iterated to a fixpoint. Factorisations that cannot be refined into each other (a
[6, 4] view of a [4, 6] dim) make the link a conflict and block both sides. (2) *Components*: every
factor of every dim becomes a node of a networkx graph; links add edges factor by factor; connected
components are the candidate prune groups.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from math import prod

import networkx as nx

Dim = tuple  # (tensor id, dim index); tensor id is a node name or (node name, output index)


@dataclass(frozen=True)
class Factor:
    """The k-th factor (outermost = 0) of dim ``dim`` of tensor ``tid``; ``size`` units."""

    tid: object
    dim: int
    k: int
    size: int


@dataclass
class Link:
    a: list
    b: list
    why: str


def _breaks(sizes):
    """Suffix products of a factor list: the index strides at which the list has boundaries."""
    out, p = {1}, 1
    for s in reversed(sizes):
        p *= s
        out.add(p)
    return out


def common_refinement(a: list[int], b: list[int]) -> list[int] | None:
    """Finest factor list both ``a`` and ``b`` refine to, or ``None`` if none exists."""
    if prod(a) != prod(b):
        return None
    pts = sorted(_breaks(a) | _breaks(b))
    for lo, hi in zip(pts, pts[1:]):
        if hi % lo:
            return None
    return [hi // lo for lo, hi in reversed(list(zip(pts, pts[1:])))]


class AxisGraph:
    """Collects links/blocks/tags from the rules, then solves for factor components."""

    def __init__(self):
        self.sizes: dict = {}                 # Dim -> size
        self.links: list[Link] = []
        self.blocks: dict = defaultdict(list)  # Dim -> [reason]
        self.soft_blocks: dict = defaultdict(list)  # Dim -> [reason]: blocks unless the group routes experts
        self.tags: dict = defaultdict(set)     # Dim -> {tag}
        self.factors: dict = {}                # Dim -> [sizes]
        self.conflicts: list[Link] = []

    # ---- statements made by rules -------------------------------------------------------------
    def add_tensor(self, tid, shape) -> None:
        for d, s in enumerate(shape):
            self.sizes[(tid, d)] = int(s)

    def link(self, a: list, b: list, why: str) -> None:
        a = [x for x in a if self.sizes.get(x, 1) > 1]
        b = [x for x in b if self.sizes.get(x, 1) > 1]
        if not a and not b:
            return
        self.links.append(Link(a, b, why))

    def block(self, dim: Dim, why: str) -> None:
        if self.sizes.get(dim, 1) > 1:
            self.blocks[dim].append(why)

    def soft_block(self, dim: Dim, why: str) -> None:
        """A block that is lifted when the dim turns out to index experts (a router's softmax/top-k:
        removing an expert is masking its logit with -inf, which both ops respect)."""
        if self.sizes.get(dim, 1) > 1:
            self.soft_blocks[dim].append(why)

    def tag(self, dim: Dim, tag: str) -> None:
        if self.sizes.get(dim, 1) > 1:
            self.tags[dim].add(tag)

    # ---- phase 1: refinement ------------------------------------------------------------------
    def _side(self, dims):
        return [s for d in dims for s in self.factors[d]]

    def _assign(self, dims, refined) -> list:
        changed, i = [], 0
        for d in dims:
            target, acc, take = self.sizes[d], 1, []
            while acc < target:
                take.append(refined[i])
                acc *= refined[i]
                i += 1
            if take != self.factors[d]:
                self.factors[d] = take
                changed.append(d)
        return changed

    def refine(self) -> None:
        for dim, s in self.sizes.items():
            self.factors[dim] = [s] if s > 1 else []
        touching = defaultdict(list)
        for i, lk in enumerate(self.links):
            for d in lk.a + lk.b:
                touching[d].append(i)
        queue, queued = deque(range(len(self.links))), set(range(len(self.links)))
        bad = set()
        while queue:
            i = queue.popleft()
            queued.discard(i)
            if i in bad:
                continue
            lk = self.links[i]
            ref = common_refinement(self._side(lk.a), self._side(lk.b))
            if ref is None:
                bad.add(i)
                continue
            for d in self._assign(lk.a, ref) + self._assign(lk.b, ref):
                for j in touching[d]:
                    if j not in queued and j not in bad:
                        queue.append(j)
                        queued.add(j)
        self.conflicts = [self.links[i] for i in sorted(bad)]
        for lk in self.conflicts:
            for d in lk.a + lk.b:
                self.block(d, f"conflicting factorisation ({lk.why})")

    # ---- phase 2: components ------------------------------------------------------------------
    def dim_factors(self, dim: Dim) -> list[Factor]:
        return [Factor(dim[0], dim[1], k, s) for k, s in enumerate(self.factors.get(dim, []))]

    def components(self) -> tuple[nx.Graph, list[set]]:
        """The factor graph (edges carry ``why``) and its connected components."""
        g = nx.Graph()
        for dim in self.sizes:
            g.add_nodes_from(self.dim_factors(dim))
        conflict_ids = {id(lk) for lk in self.conflicts}
        for lk in self.links:
            if id(lk) in conflict_ids:
                continue
            fa = [f for d in lk.a for f in self.dim_factors(d)]
            fb = [f for d in lk.b for f in self.dim_factors(d)]
            for x, y in zip(fa, fb):
                g.add_edge(x, y, why=lk.why)
        return g, [set(c) for c in nx.connected_components(g)]
