"""The structured-pruning pipeline as a short list of named passes.

    analyse -> select_groups -> score -> allocate -> reconstruct_and_remove
            -> linear_calibration -> verify

With ``attention: olica`` the allocation is Olica's ratio split and the layer-wise pass also rotates
V/O and factorises Q/K in each block (``passes/olica``); ``lincal_layers`` adds the linear
calibration (fitted block by block, inserted in the best-predicted layers afterwards).

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
from .olica import lincal as _lincal
from .olica.attention import attention_parts
from .olica.lowrank import factorise
from .olica.split import solve as olica_solve
from .olica.vo import rotate_vo
from ..errors import RecipeError

_FAMILY = {Kind.ATTN_HEADS: "attention", Kind.ATTN_KV_GROUPS: "attention", Kind.ATTN_Q_PER_KV: "attention",
           Kind.FFN: "ffn", Kind.SSM: "ssm"}


@dataclass
class PruneOutcome:
    """The pruned model (same object, changed in place), its plan and a report."""

    model: torch.nn.Module
    plan: dict
    report: dict = field(default_factory=dict)


def _block_names(model) -> list[str]:
    blocks = find_blocks(model)
    return [blocks.qualified(i) for i in range(len(blocks))]


def _block_index(names, module: str):
    return next((i for i, n in enumerate(names) if module == n or module.startswith(n + ".")), None)


def _block_of(analysis_groups, model) -> dict:
    names = _block_names(model)
    return {g.id: _block_index(names, g.module) for g in analysis_groups}, len(names)


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
        protected = lambda b: b is not None and (b < r.protect_first or b >= n - r.protect_last)  # noqa: E731
        chosen = []
        for g in a.prunable():
            if _FAMILY.get(g.kind) not in r.kinds:
                continue
            if g.kind in ATTN and (r.attention == "olica" or (has_gqa and g.kind not in want_attn)):
                continue
            if protected(block_of[g.id]):
                continue
            chosen.append(g)
        ctx.facts["groups"] = chosen
        parts = {}
        if r.attention == "olica" and "attention" in r.kinds:
            names = _block_names(ctx.model)
            parts = {m: p for m, p in attention_parts(a).items() if not protected(_block_index(names, m))}
            if not parts:
                raise RecipeError("attention 'olica': no attention with separate value/output projections "
                                  "was found (the analysis offers no prunable attn_v_channels group)")
        ctx.facts["olica_parts"] = parts
        return {"groups": len(chosen), "olica_attentions": len(parts)}


def _stats_request(groups, stats: frozenset, heads: bool, producer_stats: frozenset = frozenset(),
                   parts=(), qk_gram: bool = False) -> StatsRequest:
    mods, layouts = defaultdict(set), {}
    for p in parts:  # Olica attention: value input, output-projection input Gram and output moments
        mods[p.v_module] |= {Stat.INPUT_SQ}
        mods[p.o_module] |= {Stat.INPUT_GRAM, Stat.OUTPUT_SQ}
        for w in p.qk_weights:
            mods[w.rsplit(".", 1)[0]] |= {Stat.INPUT_SQ} | ({Stat.INPUT_GRAM} if qk_gram else set())
    for g in groups:
        if producer_stats:
            for m in g.members:
                if m.role == "producer" and m.param.endswith("weight"):
                    mods[m.param.rsplit(".", 1)[0]] |= set(producer_stats)
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
    return recipe.allocation == "uniform" and (recipe.reconstruction != "none" or _layerwise_extras(recipe))


def _layerwise_extras(recipe: Recipe) -> bool:
    """Work that needs the layer-wise pass even without reconstruction."""
    return recipe.attention == "olica" or recipe.lincal_layers > 0


class Score(Pass):
    """Scores every unit from one dense calibration pass (global allocation, or no reconstruction).
    Under ``scores_in_block`` it defers: ``scores`` is None and the blocks are scored later."""

    name, requires, ensures = "score", ("groups",), ("scores",)

    def __init__(self, recipe, windows, engine, force: bool = False):
        self.recipe, self.windows, self.engine, self.force = recipe, windows, engine, force

    def run(self, ctx):
        crit = get_criterion(self.recipe.criterion)
        prepare = getattr(crit, "prepare", None)  # a criterion with a pass of its own (gradients)
        if scores_in_block(self.recipe) and not self.force and prepare is None:
            ctx.facts["scores"] = None
            return {"criterion": crit.name, "deferred_to_blocks": True}
        stats = {}
        if prepare is not None:
            prepare(ctx.model, self.windows, ctx["groups"], self.recipe.batch_size)
        if crit.needs or crit.needs_heads:
            req = _stats_request(ctx["groups"], crit.needs, crit.needs_heads, crit.producer_needs)
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
        if r.attention == "olica":
            ffn = [g for g in ctx["groups"] if g.kind not in ATTN]
            sp = olica_solve(ctx.model, ctx["olica_parts"], ffn, cost, expr, r.target, r.olica_k, r.channel_multiple)
            ctx.facts["plan"], ctx.facts["kept"], ctx.facts["allocation"] = None, sp.ffn_kept, sp
            ctx.facts["olica_split"] = sp
            return {"scope": r.scope, "target": r.target, "achieved": round(sp.achieved, 6),
                    "removed_params": sp.removed, "in_scope_params": sp.total, "split": "olica",
                    "s_qk": round(sp.s_qk, 4), "s_vo": round(sp.s_vo, 4),
                    "v_kept": sorted(set(sp.v_kept.values())), "qk_ranks": sorted(set(sp.ranks.values())),
                    "ffn_kept": sorted(set(sp.ffn_kept.values()))}
        alloc = allocate(ctx["groups"], ctx["scores"], cost, expr, r.target, r.allocation, r.channel_multiple,
                         cumulative=getattr(get_criterion(r.criterion), "cumulative_costs", False))
        ctx.facts["plan"] = alloc.plan  # None: widths only, units picked block by block
        ctx.facts["kept"] = alloc.kept
        ctx.facts["allocation"] = alloc
        return {"scope": r.scope, "target": r.target, "achieved": round(alloc.achieved, 6),
                "removed_params": alloc.removed, "in_scope_params": alloc.total}


class ReconstructAndRemove(Pass):
    """Layer by layer on the pruned stream: (Olica) rotate V/O and factorise Q/K, then fold (and refit)
    the FFN/head units and remove them; (linear calibration) fit each pruned FFN's residual."""

    name, requires, ensures = "reconstruct_and_remove", ("plan", "analysis"), ("pruned",)

    def __init__(self, recipe, windows, engine):
        self.recipe, self.windows, self.engine = recipe, windows, engine

    def run(self, ctx):
        r = self.recipe
        rec = get_reconstructor(r.reconstruction)
        a, kept = ctx["analysis"], ctx["kept"]
        plan = ctx["plan"]
        parts = ctx.facts.get("olica_parts") or {}
        split = ctx.facts.get("olica_split")
        ctx.facts["lincal_candidates"] = []
        if not kept and not parts:
            ctx.facts["plan"], ctx.facts["pruned"] = {}, True
            return {"reconstruction": rec.name, "blocks": 0}
        if rec.name == "none" and not _layerwise_extras(r):
            prune(ctx.model, plan, a, verify=False)
            ctx.facts["pruned"] = True
            return {"reconstruction": "none"}
        crit = get_criterion(r.criterion)
        names = _block_names(ctx.model)
        by_block = defaultdict(list)
        for gid in kept:
            by_block[ctx["block_of"][gid]].append(gid)
        if None in by_block:
            raise ValueError(f"groups outside the block list cannot be reconstructed: {by_block[None]}")
        parts_by_block = defaultdict(list)
        for p in parts.values():
            parts_by_block[_block_index(names, p.module)].append(p)
        groups = [a.group(g) for g in kept]
        need = set(rec.needs) | (set(crit.needs) if plan is None else set())
        req = _stats_request(groups, frozenset(need), plan is None and crit.needs_heads,
                             crit.producer_needs if plan is None else frozenset(), parts.values(),
                             qk_gram=r.olica_qk == "whitened")
        damping = r.damping
        final_plan = {}
        lincal_rank = max(1, int(round(r.lincal_rank_ratio * _hidden_size(ctx.model))))
        report = defaultdict(int)

        def on_block(i, block, stats, bctx):
            for p in parts_by_block.get(i, []):  # Olica attention
                rotate_vo(ctx.model, p, stats)
                keep_v = list(range(split.v_kept[p.v_group]))
                if len(keep_v) < p.head_dim:
                    prune(ctx.model, {p.v_group: keep_v}, a, verify=False)
                    final_plan[p.v_group] = keep_v
                for w in p.qk_weights:
                    if w in split.ranks:
                        mod = w.rsplit(".", 1)[0]
                        st = stats[mod]
                        factorise(ctx.model, mod, split.ranks[w], st.second_moment,
                                  gram=st.gram / st.count if r.olica_qk == "whitened" else None)
                        report["factorised"] += 1
            gids = by_block.get(i)
            if not gids:
                return
            lin = _LinCalCapture(ctx.model, a, gids, block, bctx.inputs) if r.lincal_layers > 0 else None
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
            if lin is not None:
                ctx.facts["lincal_candidates"].extend(lin.fit(lincal_rank, r.lincal_damping, self.engine.reduce_sum))

        self.engine.calibrate(ctx.model, self.windows, req, batch_size=r.batch_size,
                              layerwise=True, on_block=on_block, stream=Stream.PRUNED, keep_stats=False,
                              dense_targets=rec.refits)
        ctx.facts["plan"] = final_plan
        ctx.facts["pruned"] = True
        return {"reconstruction": rec.name, "blocks": len(by_block), "olica_attentions": len(parts),
                "factorised_qk": report["factorised"],
                "scored_on": "pruned stream, per block" if plan is None else "dense stream"}


def _hidden_size(model) -> int:
    cfg = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    raise RecipeError("linear calibration: cannot tell the model's hidden size from its config")


class _LinCalCapture:
    """Captures the inputs and dense outputs of a block's FFN modules before their units are removed,
    and fits the residual of the pruned FFN afterwards (``lincal.fit``)."""

    def __init__(self, model, analysis, gids, block, inputs):
        self.names = sorted({analysis.group(g).module for g in gids})
        self.modules = [model.get_submodule(n) for n in self.names]
        for name, mod in zip(self.names, self.modules):
            if mod is block:
                raise RecipeError(f"linear calibration: the FFN group of {name} is not a submodule of its "
                                  "block (its channels live directly in the block); not supported")
        self.io = _capture(block, self.modules, inputs)
        for name, pairs in zip(self.names, self.io):
            if any(not isinstance(y, torch.Tensor) or y.shape != x.shape for x, y in pairs):
                raise RecipeError(f"linear calibration: {name} does not map its input to an output "
                                  "of the same shape; not supported")

    @torch.no_grad()
    def fit(self, rank, alpha, reduce):
        out = []
        for name, mod, pairs in zip(self.names, self.modules, self.io):
            acc = _lincal.ResidualFit(pairs[0][0].shape[-1])
            for x, y in pairs:
                acc.add(x, y - mod(x))
            for attr in ("G", "C", "sx", "se", "see"):
                setattr(acc, attr, reduce(getattr(acc, attr)))
            acc.n = int(reduce(torch.tensor(float(acc.n))).item())
            out.append(_lincal.fit(acc, rank, alpha, module=name))
        self.io = None
        return out


class LinearCalibration(Pass):
    """Insert the ``lincal_layers`` fitted calibrations whose residual fit is best (mean Pearson r)."""

    name, requires = "linear_calibration", ("pruned",)

    def __init__(self, recipe):
        self.recipe = recipe

    def run(self, ctx):
        cands = sorted(ctx.facts.get("lincal_candidates", []), key=lambda c: -c.mean_r)
        chosen = cands[: self.recipe.lincal_layers]
        for c in chosen:
            _lincal.insert(ctx.model, c)
        return {"inserted": [{"module": c.module, "rank": int(c.down.shape[0]), "mean_r": round(c.mean_r, 4),
                              "residual_error_ratio": round(c.error_after / max(c.error_before, 1e-30), 4)}
                             for c in chosen], "candidates": len(cands)}


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


def _capture(block, modules, inputs) -> list[list[tuple]]:
    """Per module, the ``(input, output)`` of every batch when running ``block`` on ``inputs``."""
    got = [[] for _ in modules]
    hooks = []
    for j, mod in enumerate(modules):
        def hook(m, args, out, j=j):
            got[j].append((args[0].detach(), out.detach() if isinstance(out, torch.Tensor) else out))
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for inp in inputs:
                block(*inp.args, **inp.kwargs)
    finally:
        for h in hooks:
            h.remove()
    return got


def _consumer_outputs(block, layers, dense_inputs):
    return [[y for _, y in pairs] for pairs in _capture(block, [l.module for l, _ in layers], dense_inputs)]


def _refit(model, block, layers, inputs, targets, damping, reduce):
    """GOA step 2. Under data parallelism each rank holds its shard's inputs and dense targets: the
    sums are all-reduced before the solve so every rank computes the same weights."""
    ios = _capture(block, [l.module for l, _ in layers], inputs)
    for (layer, _), pairs, y_list in zip(layers, ios, targets):
        acc = RefitAccumulator()
        for (x, _), y in zip(pairs, y_list):
            acc.add(x, y)
        acc.A, acc.C = reduce(acc.A), reduce(acc.C)
        acc.solve_into(layer, damping)


class Verify(Pass):
    name, requires = "verify", ("pruned", "plan", "analysis")

    def run(self, ctx):
        verify_pruned(ctx.model, ctx["analysis"], ctx["plan"])
        return {"verified_groups": len(ctx["plan"])}


def passes_for(recipe: Recipe, windows, engine) -> list[Pass]:
    passes = [Analyse(), SelectGroups(recipe), Score(recipe, windows, engine), Allocate(recipe),
              ReconstructAndRemove(recipe, windows, engine)]
    if recipe.lincal_layers > 0:
        passes.append(LinearCalibration(recipe))
    return passes + [Verify()]


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
