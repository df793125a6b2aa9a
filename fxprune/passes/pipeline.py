"""The structured-pruning pipeline as a short list of named passes.

    analyse -> calibrate_scores -> score -> allocate -> reconstruct_and_remove -> verify

``prune_model(model, recipe, windows)`` is the one verb. Scoring statistics come from one dense
pass; reconstruction runs layer-wise on the *pruned* stream (block i is calibrated on the outputs
of the already-pruned blocks before it), folding removed units into the kept ones, removing them,
and (GOA) refitting each consumer against the dense block's consumer outputs.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..analysis.analyser import Analysis, analyse
from ..analysis.groups import Kind
from ..calibration import Accumulation, Engine, HeadLayout, Stat, StatsRequest, Stream, find_blocks
from ..surgery import _keep_masks, count_params, prune, verify_pruned
from .allocate import ATTN, allocate, top_units
from .base import Pass, PassContext, PassManager
from .consumers import consumers, head_dim_of
from .cost import build_cost_model
from .criteria import get_criterion
from .reconstruct import ConsumerLayer, get_reconstructor
from .reconstruct.goa import RefitAccumulator
from .recipe import Recipe

_FAMILY = {Kind.ATTN_HEADS: "attention", Kind.ATTN_KV_GROUPS: "attention", Kind.ATTN_Q_PER_KV: "attention",
           Kind.FFN: "ffn", Kind.SSM: "ssm"}


@dataclass
class PruneOutcome:
    """The pruned model (same object, changed in place), its plan and a report."""

    model: torch.nn.Module
    plan: dict
    report: dict = field(default_factory=dict)


def _block_of(analysis_groups, model) -> dict:
    blocks = find_blocks(model)
    names = [blocks.qualified(i) for i in range(len(blocks))]
    out = {}
    for g in analysis_groups:
        out[g.id] = next((i for i, n in enumerate(names) if g.module == n or g.module.startswith(n + ".")), None)
    return out, len(names)


class Analyse(Pass):
    name, ensures = "analyse", ("analysis", "cost")

    def run(self, ctx):
        ctx.facts["analysis"] = a = analyse(ctx.model)
        ctx.facts["cost"] = build_cost_model(ctx.model, a)
        return {"groups": len(a.groups), "prunable": len(a.prunable())}


class SelectGroups(Pass):
    name, requires, ensures = "select_groups", ("analysis",), ("groups", "block_of")

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def run(self, ctx):
        r, a = self.recipe, ctx["analysis"]
        block_of, n = _block_of(a.prunable(), ctx.model)
        ctx.facts["block_of"] = block_of
        has_gqa = any(g.kind == Kind.ATTN_Q_PER_KV for g in a.prunable())
        want_attn = {Kind.ATTN_HEADS} | ({Kind.ATTN_Q_PER_KV} if r.attention_unit == "q_per_kv" else {Kind.ATTN_KV_GROUPS})
        chosen = []
        for g in a.prunable():
            if _FAMILY.get(g.kind) not in r.kinds:
                continue
            if g.kind in ATTN and has_gqa and g.kind not in want_attn:
                continue
            b = block_of[g.id]
            if b is not None and (b < r.protect_first or b >= n - r.protect_last):
                continue
            chosen.append(g)
        ctx.facts["groups"] = chosen
        return {"groups": len(chosen)}


def _stats_request(groups, stats: frozenset, heads: bool) -> StatsRequest:
    mods, layouts = defaultdict(set), {}
    for g in groups:
        for c in consumers(g):
            mods[c.module] |= set(stats)
            if heads and g.kind in ATTN:
                mods[c.module].add(Stat.HEAD_GRAM)
                hd = head_dim_of(g)
                layouts[c.module] = HeadLayout(c.member.size // hd, hd)
    return StatsRequest(mods, heads=layouts, accumulation=Accumulation.MIXED)


def scores_in_block(recipe: Recipe) -> bool:
    """Uniform widths need no scores up front: the layer-wise pass then scores each block on the
    pruned stream (one calibration pass instead of two)."""
    return recipe.allocation == "uniform" and recipe.reconstruction != "none"


class Score(Pass):
    """Scores every unit from one dense calibration pass (global allocation, or no reconstruction).
    Under ``scores_in_block`` it defers: ``scores`` is None and the blocks are scored later."""

    name, requires, ensures = "score", ("groups",), ("scores",)

    def __init__(self, recipe, windows, engine, force: bool = False):
        self.recipe, self.windows, self.engine, self.force = recipe, windows, engine, force

    def run(self, ctx):
        crit = get_criterion(self.recipe.criterion)
        if scores_in_block(self.recipe) and not self.force:
            ctx.facts["scores"] = None
            return {"criterion": crit.name, "deferred_to_blocks": True}
        stats = {}
        if crit.needs or crit.needs_heads:
            req = _stats_request(ctx["groups"], crit.needs, crit.needs_heads)
            stats = self.engine.calibrate(ctx.model, self.windows, req, batch_size=self.recipe.batch_size,
                                          layerwise=False)
        ctx.facts["scores"] = {g.id: crit.score(g, ctx.model, stats) for g in ctx["groups"]}
        return {"criterion": crit.name, "calibrated_modules": len(stats)}


class Allocate(Pass):
    name, requires, ensures = "allocate", ("scores", "cost"), ("plan",)

    def __init__(self, recipe):
        self.recipe = recipe

    def run(self, ctx):
        r, cost = self.recipe, ctx["cost"]
        expr = cost.params if r.scope == "all" else cost.linear_params
        alloc = allocate(ctx["groups"], ctx["scores"], cost, expr, r.target, r.allocation, r.channel_multiple)
        ctx.facts["plan"] = alloc.plan  # None: widths only, units picked block by block
        ctx.facts["kept"] = alloc.kept
        ctx.facts["allocation"] = alloc
        return {"scope": r.scope, "target": r.target, "achieved": round(alloc.achieved, 6),
                "removed_params": alloc.removed, "in_scope_params": alloc.total}


class ReconstructAndRemove(Pass):
    """Fold (and refit) layer by layer on the pruned stream, removing each block's units as it goes."""

    name, requires, ensures = "reconstruct_and_remove", ("plan", "analysis"), ("pruned",)

    def __init__(self, recipe, windows, engine):
        self.recipe, self.windows, self.engine = recipe, windows, engine

    def run(self, ctx):
        rec = get_reconstructor(self.recipe.reconstruction)
        a, kept = ctx["analysis"], ctx["kept"]
        plan = ctx["plan"]
        if not kept:
            ctx.facts["plan"], ctx.facts["pruned"] = {}, True
            return {"reconstruction": rec.name, "blocks": 0}
        if rec.name == "none":
            prune(ctx.model, plan, a, verify=False)
            ctx.facts["pruned"] = True
            return {"reconstruction": "none"}
        crit = get_criterion(self.recipe.criterion)
        by_block = defaultdict(list)
        for gid in kept:
            by_block[ctx["block_of"][gid]].append(gid)
        if None in by_block:
            raise ValueError(f"groups outside the block list cannot be reconstructed: {by_block[None]}")
        groups = [a.group(g) for g in kept]
        need = set(rec.needs) | (set(crit.needs) if plan is None else set())
        req = _stats_request(groups, frozenset(need), plan is None and crit.needs_heads)
        damping = self.recipe.damping
        final_plan = {}

        def on_block(i, block, stats, bctx):
            gids = by_block.get(i)
            if not gids:
                return
            if plan is None:  # score on the pruned stream, keep the allocated number of units
                sub = {g: top_units(crit.score(a.group(g), ctx.model, stats), kept[g]) for g in gids}
            else:
                sub = {g: plan[g] for g in gids}
            final_plan.update(sub)
            layers = _consumer_layers(ctx.model, a, sub)
            targets = _consumer_outputs(block, layers, bctx.dense_inputs) if rec.refits else None
            for layer, keep in layers:
                rec.fold(layer, keep, stats, damping)
            prune(ctx.model, sub, a, verify=False)
            if rec.refits:
                _refit(ctx.model, block, layers, bctx.inputs, targets, damping, self.engine.reduce_sum)

        self.engine.calibrate(ctx.model, self.windows, req, batch_size=self.recipe.batch_size,
                              layerwise=True, on_block=on_block, stream=Stream.PRUNED, keep_stats=False,
                              dense_targets=rec.refits)
        ctx.facts["plan"] = final_plan
        ctx.facts["pruned"] = True
        return {"reconstruction": rec.name, "blocks": len(by_block),
                "scored_on": "pruned stream, per block" if plan is None else "dense stream"}


def _consumer_layers(model, analysis: Analysis, sub: dict):
    masks = _keep_masks(analysis, sub)
    out, seen = [], set()
    for gid in sub:
        for c in consumers(analysis.group(gid)):
            key = (c.member.param, c.member.dim)
            if key in seen:
                continue
            seen.add(key)
            out.append((ConsumerLayer(model, c.module, c.member.param, c.member.dim), masks[key]))
    return out


def _capture(block, layers, inputs, want: str):
    """Per batch, the input (``want='in'``) or output of every consumer layer when running ``block``."""
    got = [[] for _ in layers]
    hooks = []
    for j, (layer, _) in enumerate(layers):
        def hook(mod, args, out, j=j):
            got[j].append(args[0].detach() if want == "in" else out.detach())
        hooks.append(layer.module.register_forward_hook(hook))
    try:
        for inp in inputs:
            block(*inp.args, **inp.kwargs)
    finally:
        for h in hooks:
            h.remove()
    return got


def _consumer_outputs(block, layers, dense_inputs):
    return _capture(block, layers, dense_inputs, "out")


def _refit(model, block, layers, inputs, targets, damping, reduce):
    """GOA step 2. Under data parallelism each rank holds its shard's inputs and dense targets: the
    sums are all-reduced before the solve so every rank computes the same weights."""
    xs = _capture(block, layers, inputs, "in")
    for (layer, _), x_list, y_list in zip(layers, xs, targets):
        acc = RefitAccumulator()
        for x, y in zip(x_list, y_list):
            acc.add(x, y)
        acc.A, acc.C = reduce(acc.A), reduce(acc.C)
        acc.solve_into(layer, damping)


class Verify(Pass):
    name, requires = "verify", ("pruned", "plan", "analysis")

    def run(self, ctx):
        verify_pruned(ctx.model, ctx["analysis"], ctx["plan"])
        return {"verified_groups": len(ctx["plan"])}


def passes_for(recipe: Recipe, windows, engine) -> list[Pass]:
    return [Analyse(), SelectGroups(recipe), Score(recipe, windows, engine), Allocate(recipe),
            ReconstructAndRemove(recipe, windows, engine), Verify()]


def prune_model(model, recipe: Recipe, windows: torch.Tensor | None, engine: Engine | None = None) -> PruneOutcome:
    """Prune ``model`` in place by ``recipe`` with calibration ``windows`` [n, L] (token ids)."""
    engine = engine or Engine()
    t0 = time.perf_counter()
    before = count_params(model)
    ctx = PassManager(passes_for(recipe, windows, engine)).run(PassContext(model))
    report = {
        "recipe": recipe.to_dict(),
        "params_before": before, "params_after": count_params(model),
        "passes": [{"name": r.name, "seconds": round(r.seconds, 3), **r.report} for r in ctx.results],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return PruneOutcome(model, ctx["plan"], report)
