"""A sympy cost model of a pruned model as a function of the kept units of every group.

Every prunable group ``g`` gets a symbol ``k_g`` (kept units, ``0 < k_g <= units``). A parameter
touched by groups ``G_p`` (q_proj rows are in both a KV-group and a q-per-KV group) has
``numel * prod_{g in G_p} k_g / units_g`` entries, so the parameter count is an exact polynomial;
a group touching only a segment of a dim (the q rows of a fused qkv) scales that segment only.
Stacked expert weights count ``2 * numel / kept experts * top_k`` FLOPs per token.
``linear_params`` counts the 2-D weights the prunable groups touch (the decoder's linear layers: no
embeddings, no LM head). FLOPs per token: 2 per matmul weight entry (linear layers and the LM head,
not input embedding tables), plus attention ``4 * L * (q width)`` per layer with the
sequence length ``L`` a symbol. KV-cache bytes per token: ``2 * (k width) * bytes`` per layer.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import sympy as sp
import torch

from ..analysis.analyser import Analysis
from ..analysis.groups import ATTENTION_KINDS, Kind

L = sp.Symbol("L", positive=True, integer=True)


@dataclass(frozen=True)
class CostModel:
    symbols: dict            # group id -> sympy Symbol (kept units)
    params: sp.Expr          # all parameters
    linear_params: sp.Expr   # parameters of prunable groups' linear weights (decoder linear layers)
    flops_per_token: sp.Expr
    kv_bytes_per_token: sp.Expr

    def evaluate(self, expr: sp.Expr, kept: dict, seq_len: int | None = None) -> int:
        """``expr`` at ``kept`` (group id -> kept units; unlisted groups stay whole).

        The polynomial is compiled once (``sympy.lambdify``) and evaluated in float64, then rounded:
        its exact value is an integer count and the float error is far below 0.5 (allocators call
        this thousands of times; ``subs`` took ~50 ms a call on a 30-layer model)."""
        fn = self._compiled(expr)
        args = [kept.get(gid, self.units[gid]) for gid in self.symbols]
        return int(round(fn(*args, seq_len if seq_len is not None else 0)))

    def evaluate_exact(self, expr: sp.Expr, kept: dict, seq_len: int | None = None) -> int:
        """``evaluate`` by exact rational substitution (slow; for checks)."""
        subs = {s: kept.get(gid, self.units[gid]) for gid, s in self.symbols.items()}
        if seq_len is not None:
            subs[L] = seq_len
        return int(sp.nsimplify(expr.subs(subs)))

    def _compiled(self, expr):
        cache = self.__dict__.setdefault("_fns", {})
        if id(expr) not in cache:
            cache[id(expr)] = (expr, sp.lambdify([*self.symbols.values(), L], expr, modules="math"))
        return cache[id(expr)][1]

    @property
    def units(self) -> dict:
        return self._units  # set in build_cost_model


def build_cost_model(model, analysis: Analysis, kv_bytes: int = 2) -> CostModel:
    """Cost expressions for ``model`` (eager, dense) given its ``analysis``."""
    groups = analysis.prunable()
    symbols = {g.id: sp.Symbol(f"k[{g.id}]", positive=True, integer=True) for g in groups}
    scale = defaultdict(lambda: sp.Integer(1))  # param -> fraction of its entries kept
    head_scale = defaultdict(lambda: sp.Integer(1))  # product of k_g/units_g without value-channel groups
    segs = defaultdict(lambda: defaultdict(lambda: sp.Integer(1)))  # (param, dim) -> (offset, size) -> fraction
    totals, experts = {}, {}
    for g in groups:
        for m in g.members:
            segs[(m.param, m.dim)][(m.offset, m.size)] *= symbols[g.id] / g.units
            totals[(m.param, m.dim)] = m.total
            if g.kind == Kind.MOE_EXPERTS and m.role == "expert":
                experts[m.param] = (symbols[g.id], int(g.detail.get("top_k", 1)))
        for m in {m.param for m in g.members}:
            if g.kind != Kind.V_CHANNELS:
                head_scale[m] *= symbols[g.id] / g.units
    for (param, dim), parts in segs.items():  # a dim keeps its untouched entries + each segment's share
        n = totals[(param, dim)]
        kept = (n - sum(size for _, size in parts)) + sum(size * f for (_, size), f in parts.items())
        scale[param] *= kept / n
    total = sp.Integer(0)
    linear = sp.Integer(0)
    flops = sp.Integer(0)
    seen = set()
    embeddings = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_w = getattr(out_emb, "weight", None)
    outputs = {n for n, p in model.named_parameters(remove_duplicate=False) if out_w is not None and p is out_w}
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        touched = name in scale  # test before indexing: ``scale`` is a defaultdict
        term = p.numel() * scale[name]
        total += term
        if (p.dim() == 2 or name in experts) and touched:
            linear += term
        if name in experts:  # stacked expert weights: each token runs top_k of the kept experts
            kept_experts, top_k = experts[name]
            flops += 2 * term * top_k / kept_experts
        elif p.dim() == 2 and (name not in embeddings or name in outputs):
            flops += 2 * term  # every matmul weight (not an input embedding table; a tied LM head is one)
    # Attention: scores and context cost 4 * L * (q width) FLOPs per token; the KV cache holds k and
    # v, each (q width / q heads per KV head) wide.
    q_width, rep = {}, {}
    for g in groups:
        if g.kind in ATTENTION_KINDS:
            cons = g.members_by_role("consumer")[0]
            q_width[g.module] = cons.size * head_scale[cons.param]
            if g.kind == Kind.ATTN_Q_PER_KV:
                rep[g.module] = symbols[g.id]
    kv = sp.Integer(0)
    for mod, width in q_width.items():
        flops += 4 * L * width
        kv += 2 * kv_bytes * width / rep.get(mod, 1)
    cm = CostModel(symbols, sp.expand(total), sp.expand(linear), sp.expand(flops), sp.expand(kv))
    object.__setattr__(cm, "_units", {g.id: g.units for g in groups})
    return cm
