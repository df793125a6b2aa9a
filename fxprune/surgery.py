"""Physical pruning of the eager model from a plan, masking (the reference semantics), verification.

A *plan* maps group id -> the unit indices to KEEP. Surgery slices every member parameter of every
planned group, re-derives the module attributes that carry a width with no per-family code (the
analysis traced which attributes feed which tensor sizes: ``analysis/widths.py``; surgery solves
them for the new widths), narrows value projections with padded linears (``attn_v_channels``),
lets an optional family adapter add what could not be inferred, patches the config when widths
are uniform, and (optionally) re-captures the model to verify every group has its new size.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .analysis.analyser import Analysis, analyse
from .analysis.groups import Group
from .analysis.renorm import mask_renorms
from .analysis.slicing import get_parameter, keep_masks, slice_parameters
from .analysis.widths import apply_values, current_values, scope_of, stale_attributes, trace_widths
from .errors import PlanError, SurgeryError, VerificationError
from .kinds import ATTENTION_KINDS, Kind
from .models import adapter_for
from .models.base import sync_standard_module

Plan = dict  # group id -> iterable of kept unit indices


@dataclass
class SurgeryResult:
    """What surgery did: the validated plan, params before/after, and the re-analysis if verified."""

    plan: dict
    params_before: int
    params_after: int
    stock_config: bool
    analysis_after: Analysis | None = field(default=None, repr=False)


def validate_plan(analysis: Analysis, plan: Plan) -> dict[str, list[int]]:
    """Sorted kept-unit lists for every planned group; raises ``PlanError`` naming the group."""
    groups = analysis.by_id()
    out = {}
    for gid, keep in plan.items():
        if gid not in groups:
            raise PlanError(gid, f"no such group (known: {len(groups)} groups, e.g. {list(groups)[:3]})")
        g = groups[gid]
        if not g.prunable:
            why = "; ".join(g.blocked_by[:3]) or g.not_offered
            raise PlanError(gid, f"group is not prunable: {why}")
        try:
            keep = [int(k) for k in keep]
        except (TypeError, ValueError) as e:
            raise PlanError(gid, f"kept units must be integers: {e}") from e
        if len(set(keep)) != len(keep):
            dup = sorted({k for k in keep if keep.count(k) > 1})
            raise PlanError(gid, f"duplicate unit indices {dup}")
        bad = [k for k in keep if not 0 <= k < g.units]
        if bad:
            raise PlanError(gid, f"unit indices {bad} out of range [0, {g.units})")
        if not keep:
            raise PlanError(gid, f"every unit of the group would be removed ({g.units} units); "
                                 "keep at least one")
        lo = int(g.detail.get("min_keep", 1))
        if len(keep) < lo:
            raise PlanError(gid, f"keeps {len(keep)} units, at least {lo} are needed (the router picks {lo})")
        mult = int(g.detail.get("multiple", 1))
        if len(keep) % mult and len(keep) != g.units:
            raise PlanError(gid, f"keeps {len(keep)} units; {g.kind} widths must be a multiple of {mult} "
                                 "(transformers' grouped_mm kernels need 16-byte aligned rows)")
        out[gid] = sorted(keep)
    return out


def plan_from_q_heads(analysis: Analysis, attn_id: str, kept_q_heads) -> dict[str, list[int]]:
    """Translate kept *q head* indices of a GQA attention into the ``:q_per_kv`` group's units.

    The kept heads must be the same positions in every KV group (else ``PlanError``)."""
    gid = f"{attn_id}:q_per_kv"
    try:
        g = analysis.group(gid)
    except KeyError:
        raise PlanError(gid, "no q-per-kv group: the attention is not grouped-query") from None
    n_rep = g.units
    kept = sorted(int(h) for h in kept_q_heads)
    by_group = defaultdict(set)
    total_q = None
    for m in g.members:
        if m.role == "producer" and m.param.endswith("weight"):
            total_q = m.size // m.stride
    n_kv = (total_q or n_rep) // n_rep
    for h in kept:
        by_group[h // n_rep].add(h % n_rep)
    pattern = {frozenset(s) for s in by_group.values()}
    if len(by_group) != n_kv or len(pattern) != 1:
        raise PlanError(gid, f"kept q heads {kept} are not the same positions in every one of the "
                             f"{n_kv} KV groups (n_rep={n_rep}); GQA needs a uniform num_key_value_groups")
    return {gid: sorted(pattern.pop())}


def _keep_masks(analysis: Analysis, plan: dict[str, list[int]]) -> dict:
    """(param, dim) -> boolean keep mask over the ORIGINAL size (intersection over groups)."""
    return keep_masks(analysis.by_id(), plan)


def _get_param(model: nn.Module, name: str):
    return get_parameter(model, name)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_mask(model: nn.Module, analysis: Analysis, plan: Plan) -> nn.Module:
    """Zero the removed units *where they are consumed* (consumer columns), in place; removed experts
    get a -inf router logit (hooks on the router module); a norm whose statistic runs over a planned
    group's channels is taken over the kept channels only (hooks, ``analysis/renorm.py``).

    This is the reference semantics of pruning: ``prune`` must equal it (up to float error)."""
    plan = validate_plan(analysis, plan)
    mask_renorms(model, analysis, plan)
    with torch.no_grad():
        for gid, keep in plan.items():
            g = analysis.group(gid)
            keep_t = torch.as_tensor(keep, dtype=torch.long)
            if g.kind == Kind.MOE_EXPERTS:
                _mask_router(model, g, keep_t)
                continue
            zero_consumed(model, g, keep_t)
    return model


@torch.no_grad()
def zero_consumed(model: nn.Module, g: Group, keep: torch.Tensor) -> None:
    """Zero the consumer columns of ``g``'s units not in ``keep`` (in place): the removed units'
    values reach nothing downstream."""
    for m in g.members_by_role("consumer"):
        _, _, p = _get_param(model, m.param)
        ui = m.full_unit_index(g.units)
        idx = [slice(None)] * p.dim()
        idx[m.dim] = (ui >= 0) & ~torch.isin(ui, keep)
        p[tuple(idx)] = 0


class _RouterMask(TorchFunctionMode):
    """Sets the logits of removed experts to -inf wherever ``weight`` (a router's) is applied."""

    def __init__(self, weight, drop):
        super().__init__()
        self.weight, self.drop = weight, drop

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        n = self.drop.numel()
        if getattr(func, "__name__", "") == "topk" and args and isinstance(args[0], torch.Tensor) \
                and args[0].shape[-1] == n and kwargs.get("dim", args[2] if len(args) > 2 else -1) in (-1, args[0].dim() - 1):
            # selection scores may add a per-expert bias after the logits: never select a removed expert
            args = (args[0].masked_fill(self.drop.to(args[0].device), float("-inf")),) + tuple(args[1:])
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and any(a is self.weight for a in args) and out.shape[-1] == n:
            out = out.masked_fill(self.drop.to(out.device), float("-inf"))
        return out


def _mask_router(model, g: Group, keep: torch.Tensor) -> None:
    """Masking semantics of removing experts: the router never picks them (logit -inf), so top-k
    and its normalisation run over the kept experts only, exactly as after slicing."""
    router = next(m for m in g.members if m.role == "producer" and m.param.endswith("weight"))
    _, _, weight = _get_param(model, router.param)
    mod = model.get_submodule(g.module)  # the whole MoE block: the top-k may sit outside the router
    drop = ~torch.isin(torch.arange(router.size), keep)
    mode = _RouterMask(weight, drop)

    def enter(*_):
        mode.__enter__()

    def leave(*_):
        mode.__exit__(None, None, None)
    mod.register_forward_pre_hook(enter)
    mod.register_forward_hook(leave, always_call=True)


def prune(model: nn.Module, plan: Plan, analysis: Analysis | None = None, verify: bool = True) -> SurgeryResult:
    """Physically remove every unit not kept by ``plan`` from ``model`` (in place).

    Contract: the pruned model computes what ``apply_mask`` computes, keeps ``forward``,
    ``generate`` and ``save_pretrained`` working, and (with ``verify``) re-captures with every
    planned group at its new size, else ``VerificationError``. Nothing is changed when the module
    attributes cannot be re-derived (``SurgeryError`` naming the op and module)."""
    analysis = analysis or analyse(model)
    plan = validate_plan(analysis, plan)
    adapter = adapter_for(model)
    before = count_params(model)
    new_attrs = _solve_attributes(model, analysis, plan)
    widths_before = _value_widths(model)
    touched = slice_parameters(model, _keep_masks(analysis, plan))
    apply_values(model, new_attrs)
    _narrow_values(model, analysis, plan, widths_before)
    trusted = {(a.module, a.name) for a in analysis.widths.used() if not a.config} if analysis.widths else set()
    for name in sorted(touched, key=lambda s: -s.count(".")):
        mod = model.get_submodule(name) if name else model
        trusted |= {(name, k) for k in sync_standard_module(mod)}
        trusted |= {(name, k) for k in adapter.sync_module(mod)}
    if hasattr(model, "config"):
        for (path, name), v in stale_attributes(model, trusted, {scope_of(t) for t in touched}).items():
            setattr(model.get_submodule(path), name, v)
    stock = _patch_config(model, adapter)
    result = SurgeryResult(plan, before, count_params(model), stock)
    if verify:
        result.analysis_after = verify_pruned(model, analysis, plan)
    return result


def _solve_attributes(model, analysis: Analysis, plan: dict) -> dict:
    """The module attributes (``widths.Attr`` -> value) that give every traced size its new width."""
    trace = analysis.widths
    if trace is None:
        if analysis.captured is None:
            return {}
        trace = trace_widths(model, analysis.captured)
        object.__setattr__(analysis, "widths", trace)
    if trace.error:
        raise SurgeryError(f"cannot re-derive module attributes: tracing them failed ({trace.error})")
    sized = {gid: keep for gid, keep in plan.items() if analysis.group(gid).kind != Kind.V_CHANNELS}
    new, problems = trace.solve(analysis.dim_groups, sized, current_values(model, trace))
    if problems:
        raise SurgeryError("cannot re-derive module attributes for this plan: " + "; ".join(problems[:5]))
    return new


def _narrow_values(model, analysis: Analysis, plan: dict, widths_before: dict) -> None:
    """Value-channel groups: the value projection pads each KV head back to the head width and the
    output projection reads the kept channels of every q head (``structure.PaddedOutLinear`` /
    ``SlicedInLinear``), so the attention module, its scale and its KV-cache layout stay stock.
    Already narrowed projections whose head count changed get their new head count."""
    from .models.base import sync_value_width
    from .structure import PaddedOutLinear, SlicedInLinear
    done = set()
    for gid, keep in plan.items():
        g = analysis.group(gid)
        if g.kind != Kind.V_CHANNELS:
            continue
        v = next(m for m in g.members if m.role == "producer" and m.param.endswith("weight"))
        o = next(m for m in g.members if m.role == "consumer" and m.param.endswith("weight"))
        vm, om = (model.get_submodule(m.param.rsplit(".", 1)[0]) for m in (v, o))
        width = len(keep)
        sync_value_width(vm, om, g.units, vm.weight.shape[0] // width, om.weight.shape[1] // width)
        done |= {id(vm), id(om)}
    for name, mod in model.named_modules():
        if id(mod) in done or not isinstance(mod, (PaddedOutLinear, SlicedInLinear)) or name not in widths_before:
            continue
        width = widths_before[name]
        size = mod.weight.shape[0] if isinstance(mod, PaddedOutLinear) else mod.weight.shape[1]
        mod.groups = size // width


def _value_widths(model) -> dict:
    """Kept value channels per head of every narrowed projection (before surgery)."""
    from .structure import PaddedOutLinear, SlicedInLinear
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, PaddedOutLinear):
            out[name] = mod.weight.shape[0] // mod.groups
        elif isinstance(mod, SlicedInLinear):
            out[name] = mod.weight.shape[1] // mod.groups
    return out


def _patch_config(model, adapter) -> bool:
    if not hasattr(model, "config"):
        return False
    return adapter.patch_config_checked(model.config, model)  # undone if transformers would refuse it


def verify_pruned(model: nn.Module, before: Analysis, plan: dict[str, list[int]]) -> Analysis:
    """Re-capture ``model`` (every reshape must hold) and check every planned group has its new unit
    count.

    A group is found again by its id, or by its parameters (ids shift when a group disappears,
    strides and segment offsets change with the widths), or by its consumer parameter (a value
    projection wrapped in a padded linear renames its members); a group pruned to one unit may
    disappear (a size-1 axis has nothing left to prune)."""
    after = analyse(model)
    got = after.by_id()
    by_member = defaultdict(list)
    for h in after.groups:
        for m in h.members:
            by_member[(m.param, m.dim)].append(h)

    def key(g):
        return frozenset((m.param, m.dim) for m in g.members if m.role in ("producer", "consumer", "expert", "depthwise"))

    def compatible(a, b):
        return a == b or {a, b} <= set(ATTENTION_KINDS)
    by_key = defaultdict(list)
    for g in after.groups:
        by_key[key(g)].append(g)
    problems = []
    for g in before.groups:
        if g.kind not in (*ATTENTION_KINDS, Kind.FFN, Kind.SSM, Kind.SSM_HEADS, Kind.MOE_EXPERTS, Kind.MOE_FFN):
            continue
        want = len(plan[g.id]) if g.id in plan else g.units
        if want == 1:
            continue
        cands = [h for h in by_key.get(key(g), []) if compatible(h.kind, g.kind)]
        if g.id in got and compatible(got[g.id].kind, g.kind):
            cands.append(got[g.id])
        if not cands:
            cons = next(((m.param, m.dim) for m in g.members if m.role == "consumer"),
                        (g.members[0].param, g.members[0].dim))
            cands = [h for h in by_member.get(cons, []) if compatible(h.kind, g.kind)]
        if not any(h.units == want for h in cands):
            problems.append(f"{g.id}: expected {want} units, re-capture shows "
                            f"{sorted(h.units for h in cands) or 'no such group'}")
    if problems:
        raise VerificationError("pruned model does not match the plan: " + "; ".join(problems[:10]))
    return after
