"""The dependency analysis: run the op rules over a captured graph, solve, and build prune groups."""
from __future__ import annotations

import operator
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from math import prod

import torch
from torch import fx, nn

from ..capture import CapturedGraph, capture
from ..errors import AnalysisError
from .axes import AxisGraph, Factor
from .context import RuleContext, op_name, packet_name, shapes_of
from ..kinds import DEPTH2_KINDS, Kind
from .groups import Group, Member
from .rules import IGNORED, find_rule
from .dryrun import DryRun, probe_plan
from .renorm import lifts as renorm_lifts
from .widths import DYN, WidthTrace, trace_widths

ROLE_ORDER = ("expert", "producer", "consumer", "depthwise", "embedding")


@dataclass(frozen=True)
class Analysis:
    """Groups of one captured model, the ops that blocked axes, and timings."""

    model_class: str
    groups: tuple[Group, ...]
    blocking_ops: tuple[dict, ...]
    capture_seconds: float
    analysis_seconds: float
    captured: CapturedGraph = field(repr=False, compare=False, default=None)
    # (tensor id, dim) -> ((factor size, group id or None), ...) for dims a group's factor lies in
    dim_groups: dict = field(repr=False, compare=False, default_factory=dict)
    widths: WidthTrace | None = field(repr=False, compare=False, default=None)

    def group(self, gid: str) -> Group:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def by_id(self) -> dict[str, Group]:
        return {g.id: g for g in self.groups}

    def prunable(self, kind: str | None = None) -> list[Group]:
        return [g for g in self.groups if g.prunable and (kind is None or g.kind == kind)]

    def to_json(self, model: str = "") -> dict:
        return {"model": model or self.model_class, "model_class": self.model_class,
                "capture_seconds": round(self.capture_seconds, 3),
                "analysis_seconds": round(self.analysis_seconds, 3),
                "groups": [g.to_json() for g in self.groups],
                "blocking_ops": list(self.blocking_ops)}


def _flat_nodes(a):
    if isinstance(a, fx.Node):
        yield a
    elif isinstance(a, (list, tuple)):
        for x in a:
            yield from _flat_nodes(x)
    elif isinstance(a, dict):
        for x in a.values():
            yield from _flat_nodes(x)


# ops whose output holds the same values as their first input (the index space of an index tensor
# and the parameter a tensor is a view of survive them)
VALUE_PRESERVING = {"aten.view", "aten.reshape", "aten._unsafe_view", "aten.clone", "aten.contiguous",
                    "aten.to", "aten._to_copy", "aten.unsqueeze", "aten.squeeze", "aten.flatten",
                    "aten.expand", "aten.permute", "aten.transpose", "aten.t", "aten.numpy_T", "aten.mT", "aten.alias", "aten.detach",
                    "aten.lift_fresh_copy", "aten.type_as", "aten.float"}


def _track_values(node, pk, index_space: dict, from_param: set, params: dict) -> None:
    """Carry index spaces and parameter provenance through value-preserving ops (and getitem)."""
    src = node.args[0] if node.args else None
    if node.op == "call_function" and node.target is operator.getitem and isinstance(src, fx.Node):
        key = (src.name, node.args[1])
        if key in index_space:
            index_space[node.name] = index_space[key]
        return
    if not isinstance(src, fx.Node):
        return
    if pk in VALUE_PRESERVING and src.name in index_space:
        index_space[node.name] = index_space[src.name]
    if (pk in VALUE_PRESERVING or pk == "aten.index") and (src.name in from_param or src.name in params):
        from_param.add(node.name)


def persistent_buffers(cg: CapturedGraph) -> dict:
    """Placeholder -> FQN of the module buffers saved in the state dict (not constants, not
    non-persistent buffers, which a model recomputes from its config when it is built)."""
    sig = getattr(cg.exported, "graph_signature", None)
    if sig is None:
        return {}
    transient = set(getattr(sig, "non_persistent_buffers", ()) or ())
    return {ph: fqn for ph, fqn in dict(sig.inputs_to_buffers).items() if fqn not in transient}


_CONSTANT_PRESERVING = {"aten.lift_fresh_copy", "aten.clone", "aten.alias", "aten.detach", "aten._to_copy", "aten.to"}


def small_constants(cg: CapturedGraph, limit: int = 64) -> dict:
    """Placeholder -> value of the small integer tensor constants lifted by export (``x[..., [-2]]``
    indexes with one): index rules read their positions."""
    ep = cg.exported
    sig = getattr(ep, "graph_signature", None)
    lifted = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {}) if sig is not None else {}
    consts = getattr(ep, "constants", {}) or {}
    out = {}
    for ph, fqn in lifted.items():
        v = consts.get(fqn)
        if isinstance(v, torch.Tensor) and not v.is_floating_point() and v.numel() <= limit and v.device.type != "meta":
            out[ph] = v.detach().clone()
    return out


def build_axis_graph(cg: CapturedGraph) -> tuple[AxisGraph, dict, list]:
    """Apply every op rule to the graph. Returns the axis graph, tensor shapes, and blocking ops."""
    ag, shapes, blocking = AxisGraph(), {}, []
    index_space, from_param = {}, set()
    persistent = persistent_buffers(cg)
    constants = small_constants(cg)
    for node in cg.graph.nodes:
        new = shapes_of(node)
        shapes.update(new)
        for tid, s in new.items():
            ag.add_tensor(tid, s)
        module = cg.module_of(node)
        if node.op in ("placeholder", "get_attr"):
            if node.op == "placeholder" and node.name in cg.params:
                continue
            what = (f"buffer {cg.buffers[node.name]}" if node.name in cg.buffers else
                    "model input" if node.op == "placeholder" else f"constant {node.target}")
            # a persistent buffer is saved with the weights: sliced with the experts it indexes
            # (a router's score-correction bias), fixed for every other group
            fix = ag.soft_block if node.name in persistent else ag.block
            for tid in new:
                for d in range(len(shapes[tid])):
                    fix((tid, d), f"fixed: {what}")
        elif node.op == "output":
            for n in _flat_nodes(node.args):
                for tid in [t for t in shapes if t == n.name or (isinstance(t, tuple) and t[0] == n.name)]:
                    for d in range(len(shapes[tid])):
                        ag.block((tid, d), "fixed: model output")
        elif node.op == "call_function":
            op, pk = op_name(node.target), packet_name(node.target)
            if op in IGNORED or pk in IGNORED:
                continue
            _track_values(node, pk, index_space, from_param, cg.params)
            if pk in _CONSTANT_PRESERVING and node.args and getattr(node.args[0], "name", None) in constants:
                constants[node.name] = constants[node.args[0].name]
            ctx = RuleContext(ag, node, module, shapes, index_space, from_param, constants)
            fn = find_rule(op, pk)
            if fn is None:
                blocking.append({"op": op, "module": module, "node": node.name})
                for tid in set(ctx.tensor_args()) | set(new):
                    for d in range(len(shapes[tid])):
                        ag.block((tid, d), f"no rule for {op} @ {module or '<root>'}")
                continue
            try:
                fn(ctx)
            except Exception as e:
                raise AnalysisError(f"rule for {op} failed on {node.format_node()} in module "
                                    f"{module or '<root>'}: {type(e).__name__}: {e}") from e
    return ag, shapes, blocking


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    out = []
    for xs in zip(*parts):
        if len(set(xs)) != 1:
            break
        out.append(xs[0])
    return ".".join(out)


# elementwise nonlinearities that make a producer/consumer pair an FFN (else, with a norm between, it
# is a normalised low-rank factorisation)
_ACTIVATION = re.compile(r"aten\.(silu|gelu|relu|relu6|leaky_relu|tanh|sigmoid|softplus|elu|selu|celu|mish|"
                         r"hardswish|hardsigmoid|hardtanh|erf|glu|exp|log_sigmoid|prelu)\b")


def _role(tags: set) -> str:
    for r in ROLE_ORDER:
        if r in tags:
            return r
    return "scale"


def analyse(model: nn.Module | CapturedGraph, supported_kinds: set | None = None) -> Analysis:
    """Capture (if needed) and analyse ``model`` into prune groups.

    With an eager model, its module attributes are traced (``widths.trace_widths``) and every
    depth-2 group whose widths surgery could not re-derive is reported ``not_offered`` with the
    reason. ``supported_kinds`` (optional) restricts the offered kinds further.
    """
    if isinstance(model, CapturedGraph):
        cg, eager = model, None
    else:
        cg, eager = capture(model), model
    t0 = time.perf_counter()
    ag, shapes, blocking = build_axis_graph(cg)
    ag.segment()
    for tid, (orig, _) in ag.segment_of.items():
        shapes[tid] = (ag.sizes[(tid, 0)],)
    ag.refine()
    graph, comps = ag.components()
    comp_of = {f: i for i, c in enumerate(comps) for f in c}

    def comp_tags(c):
        return set().union(*(ag.tags.get((f.tid, f.dim), set()) for f in c))

    param_roles = _param_roles(cg, ag, comp_of, shapes)
    tags_of = {}
    raw = []
    bufs = persistent_buffers(cg)
    name_of = {**cg.params, **bufs}

    def where(f):
        """(param placeholder, dim, offset, full size) of a parameter factor (or of a segment of one);
        persistent buffers count too (they are members of expert groups only, below)."""
        if f.tid in name_of:
            return f.tid, f.dim, 0, shapes[f.tid][f.dim]
        seg = ag.segment_of.get(f.tid)
        if seg is not None and seg[0][0] in name_of:
            (ptid, pdim), start = seg
            return ptid, pdim, start, shapes[ptid][pdim]
        return None

    for i, comp in enumerate(comps):
        if not any(where(f) is not None and where(f)[0] in cg.params for f in comp):
            continue
        tags = comp_tags(comp)
        routes = "expert_index" in tags  # a buffer is a member only where its soft block is lifted
        pf = sorted((f for f in comp if where(f) is not None and (routes or where(f)[0] in cg.params)),
                    key=lambda f: (name_of[where(f)[0]], where(f)[1], where(f)[2], f.k))
        tags_of[i] = tags
        raw.append((i, comp, pf))

    groups, used_ids, comp_gid = [], defaultdict(int), {}
    all_params = set(cg.params.values())
    for i, comp, pf in raw:
        units = pf[0].size
        blocked, seen, members = set(), set(), []
        routes = "expert_index" in tags_of[i]
        renorm = {}  # norm module -> the reduction's reason (analysis/renorm.py)
        for f in comp:
            blocked.update(ag.blocks.get((f.tid, f.dim), ()))
            if not routes:
                blocked.update(ag.soft_blocks.get((f.tid, f.dim), ()))
            for why_, mod, key, size in ag.renorm_blocks.get((f.tid, f.dim), ()):
                renorm.setdefault(mod, (why_, key, size))
        for f in pf:
            key = (f.tid, f.dim)
            ptid, pdim, offset, total = where(f)
            if key in seen:
                blocked.add(f"{name_of[ptid]} dim {pdim} couples to itself at two strides")
                continue
            seen.add(key)
            fs = ag.factors[key]
            members.append(Member(name_of[ptid], pdim, shapes[f.tid][f.dim], prod(fs[f.k + 1:]),
                                  _role(param_roles.get(key, set())), offset, total))
        roles = {m.role for m in members}
        tags = tags_of[i]
        kind = _classify(roles, tags, pf, ag, comp_of, tags_of)
        if kind == Kind.FFN and any("expert" in ag.tags.get((where(f)[0], d), ()) for f in pf
                                    for d in range(len(shapes[where(f)[0]]))):
            kind = Kind.MOE_FFN  # the same channel of every expert of a stacked (E, ...) weight
        elif kind == Kind.FFN and _stacked_experts(pf, where, shapes):
            kind = Kind.MOE_FFN  # stacked (E, out, in) weights whose router the analysis did not tag
        why = sorted({d["why"] for f in comp for _, _, d in graph.edges(f, data=True)})
        if kind == Kind.FFN and why and all(w.startswith("aten.linear") for w in why):
            kind = Kind.LOW_RANK  # two linear layers with nothing between: a factorisation's rank
        elif kind == Kind.FFN and any(b.startswith(("reduced by", "normalised by")) for b in blocked | {r[0] for r in renorm.values()}) \
                and not any(_ACTIVATION.search(w) for w in why):
            kind = Kind.LOW_RANK  # a normalised latent rank (MLA's q_a/kv_a, Mamba's dt rank): no activation
        mods = [m.param.rsplit(".", 1)[0] for m in members if m.role in ("producer", "consumer", "depthwise", "expert")]
        prefix = _common_prefix(mods or [m.param.rsplit(".", 1)[0] for m in members]) or "model"
        suffix = {Kind.ATTN_Q_PER_KV: ":q_per_kv", Kind.QK_CHANNELS: ":qk_channels",
                  Kind.V_CHANNELS: ":v_channels", Kind.OTHER: ":other", Kind.RESIDUAL: ":residual",
                  Kind.LOW_RANK: ":rank", Kind.MOE_EXPERTS: ":experts"}.get(kind, "")
        gid = prefix + suffix
        used_ids[gid] += 1
        if used_ids[gid] > 1:
            gid = f"{gid}#{used_ids[gid] - 1}"
        comp_gid[i] = gid
        not_offered = ""
        if kind == Kind.RESIDUAL:
            not_offered = "the residual stream is not a depth-2 group"
        elif kind not in DEPTH2_KINDS:
            not_offered = f"{kind} groups are reported, not pruned"
        elif supported_kinds is not None and kind not in supported_kinds:
            not_offered = f"{kind} groups were not asked for (supported_kinds={sorted(supported_kinds)})"
        cons = [m for m in members if m.role == "consumer"] or members
        if kind == Kind.SSM and cons[0].stride > 1:
            kind = Kind.SSM_HEADS  # Mamba-2: a unit is a group of heads (with its B/C state group)
        explanation = tuple(why[:12] + ([f"... and {len(why) - 12} more"] if len(why) > 12 else []))
        detail = {}
        if renorm and renorm_lifts(kind, renorm, members, all_params):
            # the norms' statistic is over the kept channels: norm module -> the dim it reduces
            detail["renorm"] = {mod: list(key) for mod, (_, key, _) in sorted(renorm.items())}
        else:
            blocked.update(r[0] for r in renorm.values())
        if kind in (Kind.FFN,):
            detail["glu"] = len([m for m in members if m.role == "producer" and m.param.endswith("weight")]) > 1
        if kind == Kind.MOE_FFN:
            # transformers' grouped_mm kernels need 16-byte aligned rows: keep expert widths a multiple
            # of 8 channels (bf16; 4 would do in fp32)
            detail["multiple"] = 8
        if kind == Kind.MOE_EXPERTS:
            ks = [int(t.split("=", 1)[1]) for t in tags if t.startswith("topk=")]
            if ks:
                detail["top_k"] = detail["min_keep"] = max(ks)  # the router must still find k experts
        groups.append(Group(
            id=gid, kind=kind, units=units, unit_size=cons[0].size // units,
            params_per_unit=sum(_numel(shapes[where(f)[0]]) * shapes[f.tid][f.dim] // (where(f)[3] * units)
                                for f in pf),
            members=tuple(members), blocked_by=tuple(sorted(blocked)), not_offered=not_offered,
            explanation=explanation, detail=detail))
    dim_groups = {}

    def row_of(key):
        fs = ag.factors.get(key, [])
        return tuple((size, comp_gid.get(comp_of.get(Factor(key[0], key[1], k, size)))) for k, size in enumerate(fs))
    for key in ag.factors:
        if key[0] in ag.segment_of:
            continue
        row = row_of(key)
        if any(gid is not None for _, gid in row):
            dim_groups[key] = ((0, ag.sizes[key], row),)
    for key, segs in ag.segments.items():  # a cut dim: its segments, each with its own groups
        rows = tuple((start, length, row_of(seg)) for seg, start, length in segs)
        if any(gid is not None for _, _, row in rows for _, gid in row):
            dim_groups[key] = rows
    trace = None
    if eager is not None:
        trace = trace_widths(eager, cg)
        groups = _check_resizable(groups, trace, dim_groups, eager)
    groups.sort(key=lambda g: (_natural(g.id)))
    seconds = time.perf_counter() - t0
    return Analysis(cg.model_class, tuple(groups), tuple(blocking), cg.capture_seconds, seconds, cg,
                    dim_groups, trace)


def _check_resizable(groups, trace: WidthTrace, dim_groups: dict, model) -> list:
    """Mark depth-2 groups whose module attributes could not be re-derived after surgery."""
    if trace.error:
        why = f"fxprune could not trace the module attributes that carry widths ({trace.error[:200]})"
        return [replace(g, not_offered=why) if g.prunable else g for g in groups]
    affected = trace.affected(dim_groups)
    sym_uses = defaultdict(set)
    for i, u in enumerate(trace.uses):
        if u.expr is not None:
            for s in u.expr.free_symbols - {DYN}:
                sym_uses[s].add(i)
    out = []
    for g in groups:
        if not g.prunable or g.units < 2 or g.kind == Kind.V_CHANNELS:
            if g.prunable and g.kind == Kind.V_CHANNELS:
                why = value_width_problem(g, model)
                g = replace(g, not_offered=why) if why else g
            out.append(g)
            continue
        uses = set(affected.get(g.id, ()))
        for i in list(uses):
            e = trace.uses[i].expr
            for s in (e.free_symbols if e is not None else ()):
                uses |= sym_uses[s]
        _, problems = trace.solve(dim_groups, {g.id: list(range(g.units - 1))}, uses=uses)
        if problems:
            g = replace(g, not_offered="cannot resize: " + "; ".join(problems[:3]))
        out.append(g)
    return _dry_run(out, trace, dim_groups, model)


def _dry_run(groups, trace, dim_groups, model, per_kind_limit: int = 64) -> list:
    """Confirm the traced widths by pruning a meta copy (every offered group loses one unit) and
    running it; on failure, find the groups (per kind, then one by one) whose removal breaks it."""
    runner = DryRun(model, {g.id: g for g in groups}, dim_groups, trace)
    probes = {g.id: probe_plan(g) for g in groups if g.prunable and g.kind in DEPTH2_KINDS and g.kind != Kind.V_CHANNELS}
    probes = {k: v for k, v in probes.items() if v is not None}
    if not runner.error(probes):
        return groups
    by_kind = defaultdict(list)
    for g in groups:
        if g.id in probes:
            by_kind[g.kind].append(g)
    bad = {}
    for kind, gs in by_kind.items():
        err = runner.error({g.id: probes[g.id] for g in gs})
        if not err:
            continue
        for g in gs[:per_kind_limit]:
            e = runner.error({g.id: probes[g.id]})
            if e:
                bad[g.id] = e
        for g in gs[per_kind_limit:]:
            bad[g.id] = err
    return [replace(g, not_offered=f"surgery dry run (meta device) fails when {_where(g)} loses a unit: {bad[g.id]}")
            if g.id in bad else g for g in groups]


def _where(g: Group) -> str:
    """A module path for ``g`` (its id's prefix, or its first member's module when the members share
    no prefix and the id says only 'model')."""
    if "." in g.module or not g.members:
        return g.module
    return g.members[0].param.rsplit(".", 1)[0]


def value_width_problem(g: Group, model) -> str:
    """Why the value channels of ``g`` cannot be narrowed ('' if they can): surgery pads each KV head
    back to the head width (``structure.PaddedOutLinear``), which needs separate linear layers."""
    from torch import nn as _nn
    from ..structure import PaddedOutLinear, SlicedInLinear
    mods = {r: {m.param.rsplit(".", 1)[0] for m in g.members if m.role == r} for r in ("producer", "consumer")}
    if len(mods["producer"]) != 1 or len(mods["consumer"]) != 1 or any(
            m.role not in ("producer", "consumer") for m in g.members):
        return (f"value channels of {g.module}: they meet {sorted(mods['producer'] | mods['consumer'])} (an output gate or "
                "norm besides the value and output projections); narrowing pads one value projection only")
    for m in g.members:
        if not m.param.endswith("weight") or m.role not in ("producer", "consumer"):
            continue
        path = m.param.rsplit(".", 1)[0]
        if m.size != m.total:
            return (f"value channels: {path} is a fused projection (rows {m.offset}..{m.offset + m.size}); "
                    "narrowing values needs separate value and output projections")
        mod = model.get_submodule(path)
        want = (PaddedOutLinear, _nn.Linear) if m.role == "producer" else (SlicedInLinear, _nn.Linear)
        if type(mod) not in want and not isinstance(mod, (PaddedOutLinear, SlicedInLinear)):
            return (f"value channels: {path} is a {type(mod).__name__}; narrowing values needs separate "
                    "nn.Linear value and output projections (a fused projection is not supported)")
        if m.role == "producer" and m.dim != 0 or m.role == "consumer" and m.dim != 1:
            return f"value channels: {path} is not read as an nn.Linear"
    return ""


def _stacked_experts(pf, where, shapes) -> bool:
    """Whether the group's parameters are stacked expert weights: at least two members, every one
    a dim >= 1 of a 3-D parameter (a convolution's weight has its output channels on dim 0)."""
    dims = [(len(shapes[where(f)[0]]), where(f)[1]) for f in pf]
    return len(dims) >= 2 and all(r == 3 and d >= 1 for r, d in dims)


def _numel(shape) -> int:
    return prod(shape) if shape else 1


def _natural(s: str):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


PASSTHROUGH = {"aten.unsqueeze", "aten.squeeze", "aten.view", "aten.reshape", "aten._unsafe_view",
               "aten.t", "aten.numpy_T", "aten.mT", "aten.transpose", "aten.permute", "aten.to", "aten._to_copy", "aten.alias",
               "aten.clone", "aten.contiguous", "aten.detach", "aten.expand", "aten.float", "aten.type_as",
               "aten.lift_fresh_copy", "aten.index"}


def _source_param(cg, node):
    """The parameter placeholder ``node`` is a view/cast of, or None."""
    while node is not None:
        if node.op == "placeholder":
            return node.name if node.name in cg.params else None
        if node.op != "call_function" or packet_name(node.target) not in PASSTHROUGH:
            return None
        node = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    return None


def _param_roles(cg, ag, comp_of, shapes) -> dict:
    """Role tags of parameter dims. A rule tags the *operand* of an op; when that operand is a view
    or cast of a parameter (Mamba's conv weight is ``weight.squeeze(1).unsqueeze(1)``), the tag is
    carried to the parameter dim whose factors lie in the same components."""
    nodes = {n.name: n for n in cg.graph.nodes}
    roles = defaultdict(set)

    def cg_shapes(t):
        return shapes.get(t, ())
    for (tid, d), tags in ag.tags.items():
        rt = tags & set(ROLE_ORDER)
        if not rt:
            continue
        seg = ag.segment_of.get(tid)
        base = seg[0][0] if seg is not None else tid
        if base in cg.params:
            roles[(tid, d)] |= rt
            continue
        src = _source_param(cg, nodes.get(base)) if isinstance(base, str) else None
        if src is None:
            continue
        want = {comp_of.get(f) for f in ag.dim_factors((tid, d))}
        for d2 in range(len(cg_shapes(src))):
            for dim in ag._parts((src, d2)):
                if {comp_of.get(f) for f in ag.dim_factors(dim)} == want:
                    roles[dim] |= rt
    return roles


def _classify(roles, tags, pf, ag, comp_of, tags_of) -> str:
    prod_cons = "producer" in roles and "consumer" in roles
    if "expert_index" in tags and "producer" in roles:
        return Kind.MOE_EXPERTS  # router rows + the experts' stacked weights
    if "embedding" in tags and not (prod_cons and tags & {"attn_head", "matmul_batch"}):
        return Kind.RESIDUAL  # (a relative-position bias table with one column per head is heads)
    if "depthwise" in roles and prod_cons:
        return Kind.SSM
    if prod_cons and tags & {"attn_head", "matmul_batch"}:
        if "broadcast" in tags:
            return Kind.ATTN_Q_PER_KV
        for f in pf:
            fs = ag.factors[(f.tid, f.dim)]
            if f.k + 1 < len(fs):
                nxt = comp_of.get(type(f)(f.tid, f.dim, f.k + 1, fs[f.k + 1]))
                if nxt is not None and "broadcast" in tags_of.get(nxt, set()) and \
                        tags_of[nxt] & {"attn_head", "matmul_batch"}:
                    return Kind.ATTN_KV_GROUPS
        return Kind.ATTN_HEADS
    if "attn_qk_dim" in tags or ("matmul_inner" in tags and "producer" in roles):
        return Kind.QK_CHANNELS
    if tags & {"attn_v_dim", "matmul_cols"}:
        return Kind.V_CHANNELS
    if prod_cons:
        return Kind.FFN
    return Kind.OTHER
