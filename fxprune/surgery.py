"""Physical pruning of the eager model from a plan, masking (the reference semantics), verification.

A *plan* maps group id -> the unit indices to KEEP. Surgery slices every member parameter of every
planned group, lets the family adapter re-derive module attributes from the new shapes, patches the
config when widths are uniform, and (optionally) re-captures the model to verify every group has its
new size.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from .analysis.analyser import Analysis, analyse
from .analysis.groups import Group, Kind
from .errors import PlanError, SurgeryError, VerificationError
from .models import adapter_for

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
    masks = {}
    for gid, keep in plan.items():
        g = analysis.group(gid)
        keep_t = torch.as_tensor(keep, dtype=torch.long)
        for m in g.members:
            k = torch.isin(m.unit_index(g.units), keep_t)
            key = (m.param, m.dim)
            masks[key] = masks[key] & k if key in masks else k
    return masks


def _get_param(model: nn.Module, name: str):
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return mod, attr, getattr(mod, attr)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def apply_mask(model: nn.Module, analysis: Analysis, plan: Plan) -> nn.Module:
    """Zero the removed units *where they are consumed* (consumer columns), in place.

    This is the reference semantics of pruning: ``prune`` must equal it (up to float error)."""
    plan = validate_plan(analysis, plan)
    with torch.no_grad():
        for gid, keep in plan.items():
            g = analysis.group(gid)
            keep_t = torch.as_tensor(keep, dtype=torch.long)
            for m in g.members_by_role("consumer"):
                _, _, p = _get_param(model, m.param)
                drop = ~torch.isin(m.unit_index(g.units), keep_t)
                idx = [slice(None)] * p.dim()
                idx[m.dim] = drop
                p[tuple(idx)] = 0
    return model


def prune(model: nn.Module, plan: Plan, analysis: Analysis | None = None, verify: bool = True) -> SurgeryResult:
    """Physically remove every unit not kept by ``plan`` from ``model`` (in place).

    Contract: the pruned model computes what ``apply_mask`` computes, keeps ``forward``,
    ``generate`` and ``save_pretrained`` working, and (with ``verify``) re-captures with every
    planned group at its new size, else ``VerificationError``."""
    analysis = analysis or analyse(model)
    plan = validate_plan(analysis, plan)
    adapter = adapter_for(model)
    before = count_params(model)
    masks = _keep_masks(analysis, plan)
    per_param = defaultdict(dict)
    for (pname, dim), keep in masks.items():
        per_param[pname][dim] = keep
    touched = set()
    with torch.no_grad():
        for pname, dims in per_param.items():
            try:
                mod, attr, p = _get_param(model, pname)
            except AttributeError as e:
                raise SurgeryError(f"parameter {pname} named by the analysis is not in the model") from e
            new = p.data
            for dim, keep in dims.items():
                if keep.numel() != new.shape[dim]:
                    raise SurgeryError(f"{pname} dim {dim} has size {new.shape[dim]}, the group expects "
                                       f"{keep.numel()}: was the model changed after analysis?")
                new = new.index_select(dim, torch.nonzero(keep).flatten().to(new.device))
            setattr(mod, attr, nn.Parameter(new.contiguous(), requires_grad=p.requires_grad))
            parts = pname.split(".")[:-1]
            for i in range(len(parts), -1, -1):
                touched.add(".".join(parts[:i]))
    for name in sorted(touched, key=lambda s: -s.count(".")):
        adapter.sync(model.get_submodule(name) if name else model)
    stock = adapter.patch_config_checked(model.config, model) if hasattr(model, "config") else False
    result = SurgeryResult(plan, before, count_params(model), stock)
    if verify:
        result.analysis_after = verify_pruned(model, analysis, plan)
    return result


def verify_pruned(model: nn.Module, before: Analysis, plan: dict[str, list[int]]) -> Analysis:
    """Re-capture ``model`` and check every group has the expected unit count.

    A group pruned to one unit may disappear (a size-1 axis has nothing left to prune)."""
    after = analyse(model)
    got = after.by_id()
    problems = []
    for g in before.groups:
        if g.kind not in (Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV, Kind.FFN, Kind.SSM):
            continue
        want = len(plan[g.id]) if g.id in plan else g.units
        have = got[g.id].units if g.id in got else 1
        if have != want:
            problems.append(f"{g.id}: expected {want} units, re-capture shows {have}")
    if problems:
        raise VerificationError("pruned model does not match the plan: " + "; ".join(problems[:10]))
    return after
