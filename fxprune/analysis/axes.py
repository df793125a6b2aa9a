"""The axis graph: tensor dimensions, their factorisation, and the couplings between them.

Op rules (``fxprune/analysis/rules``) only make *local* statements about one node:

* ``link(a, b)``: the row-major flattening of dims ``a`` equals the flattening of dims ``b``, index
  for index (a view merging two dims, a linear layer's feature dim and its weight's dim, ...);
* ``block(dim, why)``: this dim may not lose channels (a reduction over it, a buffer, the model output);
* ``tag(dim, tag)``: a fact used to classify groups (``producer``, ``attn_head``, ``broadcast``...);
* ``soft_block(dim, why)``: a block lifted when the dim's group indexes experts (router softmax/top-k);
* ``renorm_block(dim, why, module)``: a norm module's statistic over this dim (``analysis/renorm.py``):
  lifted for the group kinds that may renormalise over their kept channels, a block otherwise.

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


_VIEWS = ("aten.view.", "aten.reshape.", "aten._unsafe_view.", "aten.unflatten.")  # ops whose links are plain views


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
        self.renorm_blocks: dict = defaultdict(list)  # Dim -> [(reason, norm module, reduced Dim, its size)]
        self.tags: dict = defaultdict(set)     # Dim -> {tag}
        self.factors: dict = {}                # Dim -> [sizes]
        self.conflicts: list[Link] = []
        self.cuts: list = []                   # (whole Dim, part Dim, offset, why)
        self.segments: dict = {}               # segmented Dim -> [(segment Dim, start, length)]
        self.segment_of: dict = {}             # segment tensor id -> (original Dim, start)

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

    def renorm_block(self, dim: Dim, why: str, module: str) -> None:
        """A norm module (``module``) takes its statistic over this dim: a block unless the group
        accepts renormalising over its kept channels (``analysis/renorm.py``)."""
        if self.sizes.get(dim, 1) > 1:
            self.renorm_blocks[dim].append((why, module, dim, self.sizes[dim]))

    def tag(self, dim: Dim, tag: str) -> None:
        if self.sizes.get(dim, 1) > 1:
            self.tags[dim].add(tag)

    def cut(self, whole: Dim, part: Dim, offset: int, why: str) -> None:
        """``part`` is the slice ``[offset, offset + size(part))`` of ``whole`` (unequal split, slice
        or concatenation: a fused projection's q/k/v, Mamba-2's z/xBC/dt)."""
        self.cuts.append((whole, part, int(offset), why))

    # ---- phase 0: segments --------------------------------------------------------------------
    def segment(self) -> None:
        """Replace every dim that is cut into unequal pieces by its segments.

        Dims joined by one-to-one links share an index space (a class); every cut of a class member
        (and, shifted, of the pieces cut from it) splits all of them at the same points. Each
        segment becomes a 1-D virtual tensor ``(tid, "seg", dim, j)``; one-to-one links and blocks,
        tags and cuts are rewritten segment by segment. A segmented dim inside a many-to-one link (a
        reshape) cannot be expressed: that link is dropped and its dims blocked."""
        if not self.cuts:
            return
        parent = {}

        def find(x):
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        simple = [lk for lk in self.links if len(lk.a) == 1 and len(lk.b) == 1
                  and self.sizes.get(lk.a[0]) == self.sizes.get(lk.b[0])]
        for lk in simple:
            parent[find(lk.a[0])] = find(lk.b[0])
        points = defaultdict(set)  # class root -> cut points
        cuts = [(w, p, o, why) for w, p, o, why in self.cuts if self.sizes.get(w, 1) > 1 and self.sizes.get(p, 0) > 0]
        for w, p, o, _ in cuts:
            points[find(w)] |= {o, o + self.sizes.get(p, 1)}
        views = self._outer_links(simple)
        # only a view that is the one reshape of both its flat and its head class: segmenting the
        # flat dim must not cut a dim that another reshape (a chunked loop, a repeat) also splits
        others = defaultdict(int)
        for lk in self.links:
            if len(lk.a) == 1 and len(lk.b) == 1 and self.sizes.get(lk.a[0]) == self.sizes.get(lk.b[0]):
                continue
            for r in {find(d) for d in lk.a + lk.b}:
                others[r] += 1
        views = [v for v in views if others[find(v[1])] == 1 and others[find(v[2])] == 1]
        changed = True
        while changed:  # carry cut points between a whole and the pieces cut from it
            changed = False
            for _, flat, head, inner in views:  # a view splitting off the cut dim as its outermost factor
                rf, rh = find(flat), find(head)
                up = {x * inner for x in points.get(rh, ())}
                if not up <= points[rf]:
                    points[rf] |= up
                    changed = True
            for w, p, o, _ in cuts:
                n = self.sizes.get(p, 1)
                rw, rp = find(w), find(p)
                inner = {x - o for x in points[rw] if o < x < o + n}
                outer = {x + o for x in points[rp] if 0 < x < n}
                if not inner <= points[rp]:
                    points[rp] |= inner
                    changed = True
                if not outer <= points[rw]:
                    points[rw] |= outer
                    changed = True
        by_class = defaultdict(list)
        for w, p, o, why in cuts:
            by_class[find(w)].append((w, p, o, why))
        for root, cs in list(by_class.items()):
            n = self.sizes[cs[0][0]]
            lens = {self.sizes[p] for _, p, _, _ in cs}
            if len(lens) == 1 and all(o % next(iter(lens)) == 0 for _, _, o, _ in cs) and n % next(iter(lens)) == 0 \
                    and not any(points[find(p)] - {0, self.sizes[p]} for _, p, _, _ in cs):
                # equal aligned pieces (RoPE halves, an MHA qkv): channels couple across pieces
                length = next(iter(lens))
                for w, p, o, why in cs:
                    sel = (("piece", len(self.sizes)), 0)
                    self.sizes[sel] = n // length
                    self.block(sel, f"pieces selected by {why}")
                    self.links.append(Link([w], [sel, p], why))
                points.pop(root, None)
                cuts = [c for c in cuts if find(c[0]) != root]
        members = defaultdict(list)
        for d in list(self.sizes):
            if find(d) in points:
                members[find(d)].append(d)
        simple_ids = {id(lk) for lk in simple}
        # a view whose outermost factor is the cut dim (and whose inner factors are not cut) is
        # expressed segment by segment below; any other reshape of a cut dim is not
        split_ok = {id(lk) for lk, flat, head, inner in views
                    if points.get(find(head)) and points.get(find(flat), set()) - {0, self.sizes[flat]}
                    == {x * inner for x in points[find(head)]} - {0, self.sizes[flat]}
                    and not any(points.get(find(d)) for d in self._inner_dims(lk, head))}
        reshaped = {find(d) for lk in self.links if id(lk) not in simple_ids for d in lk.a + lk.b
                    if not (id(lk) in split_ok and d not in self._inner_dims(lk, None))}
        refused = set()
        for root, dims in members.items():
            n = self.sizes[dims[0]]
            pts = sorted({0, n} | {x for x in points[root] if 0 < x < n})
            if len(pts) <= 2:
                continue
            if root in reshaped:  # cut pieces of a dim that is also reshaped: not expressible
                refused.add(root)
                continue
            for d in dims:
                segs = []
                for j, (a, b) in enumerate(zip(pts, pts[1:])):
                    tid = (d[0], "seg", d[1], j)
                    self.sizes[(tid, 0)] = b - a
                    self.segment_of[tid] = (d, a)
                    segs.append(((tid, 0), a, b - a))
                self.segments[d] = segs
        for w, p, o, why in cuts:
            if find(w) in refused or find(p) in refused or (w not in self.segments and p not in self.segments
                                                             and self.sizes.get(p) != self.sizes.get(w)):
                self.block(w, f"unaligned piece ({why})")
                self.block(p, f"unaligned piece ({why})")
        if not self.segments:
            return
        new_links = []
        for lk in self.links:
            seg_dims = [d for d in lk.a + lk.b if d in self.segments]
            if not seg_dims:
                new_links.append(lk)
            elif len(lk.a) == 1 and len(lk.b) == 1 and lk.a[0] in self.segments and lk.b[0] in self.segments:
                for (x, _, _), (y, _, _) in zip(self.segments[lk.a[0]], self.segments[lk.b[0]]):
                    new_links.append(Link([x], [y], lk.why))
            elif id(lk) in split_ok and all(d in self.segments for d in self._outer_pair(lk)) \
                    and len(self.segments[self._outer_pair(lk)[0]]) == len(self.segments[self._outer_pair(lk)[1]]):
                flat, head = self._outer_pair(lk)
                rest = self._inner_dims(lk, head)
                for (x, _, _), (y, _, _) in zip(self.segments[flat], self.segments[head]):
                    new_links.append(Link([x], [y] + rest, lk.why))  # segment j of the flat dim = [head seg j, inner...]
            else:
                for d in lk.a + lk.b:
                    for x in self._parts(d):
                        self.block(x, f"cut into unequal pieces and reshaped ({lk.why})")
        for w, p, o, why in cuts:
            if w not in self.segments:
                continue
            n = self.sizes.get(p, 1)
            whole = [(x, a) for x, a, _ in self.segments[w]]
            part = [(x, a + o) for x, a, _ in self.segments.get(p, [(p, 0, n)])]
            for x, a in part:
                hit = [y for y, b in whole if b == a]
                if hit:
                    new_links.append(Link([hit[0]], [x], why))
        self.links = new_links
        for d, segs in self.segments.items():
            for table in (self.blocks, self.soft_blocks, self.renorm_blocks, self.tags):
                if d in table:
                    v = table.pop(d)
                    for x, _, _ in segs:
                        table[x] = type(v)(v)
            del self.sizes[d]

    def _outer_links(self, simple) -> list:
        """Many-to-one links ``flat <-> [head, inner...]`` (a view splitting a dim into heads):
        (link, flat dim, head dim, product of the inner sizes)."""
        simple_ids = {id(lk) for lk in simple}
        out = []
        for lk in self.links:
            if id(lk) in simple_ids or not lk.why.startswith(_VIEWS):
                continue
            for one, many in ((lk.a, lk.b), (lk.b, lk.a)):
                if len(one) == 1 and len(many) >= 2:
                    inner = prod(self.sizes.get(d, 1) for d in many[1:])
                    if self.sizes.get(one[0]) == self.sizes.get(many[0], 0) * inner and inner > 1:
                        out.append((lk, one[0], many[0], inner))
                    break
        return out

    @staticmethod
    def _outer_pair(lk) -> tuple:
        one, many = (lk.a, lk.b) if len(lk.a) == 1 else (lk.b, lk.a)
        return one[0], many[0]

    @staticmethod
    def _inner_dims(lk, head) -> list:
        many = lk.b if len(lk.a) == 1 else lk.a
        return list(many[1:])

    def _parts(self, d):
        return [x for x, _, _ in self.segments[d]] if d in self.segments else [d]

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
