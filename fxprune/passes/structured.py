"""The passes of a structured-pruning step (``steps/structured.py`` lists them in order).

Planning (the dry run):  analyse -> select_groups -> score | measure_loss -> allocate | olica_split
Applying:                reconstruct_blocks | remove_planned -> insert_linear_calibration -> verify

``score`` runs only when the allocation needs every unit's score up front (global allocation, or no
layer-wise work at all); otherwise units are scored block by block on the pruned stream, inside
``reconstruct_blocks``, which drives the block-wise runner with the step's ops (``passes/ops``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from ..analysis.analyser import analyse
from ..analysis.groups import ATTENTION_KINDS, Kind
from ..calibration import find_blocks
from ..calibration.runner import Stream
from ..errors import AnalysisError, RecipeError
from ..kinds import FAMILY
from ..surgery import prune, verify_pruned
from .allocate import allocate
from .base import Pass, StepPass
from .blockwise import BlockwisePass
from .consumers import stats_request
from .cost import build_cost_model
from .criteria import get_criterion
from .olica import lincal as _lincal
from .olica.attention import attention_parts
from .olica.split import solve as olica_solve
from .ops import (BlockRefit, CaptureForLinCal, CaptureRefitTargets, CaptureStreamTargets, FitLinCal, OlicaAttention, Refit, RemoveUnits,
                  ScoreBlocks)
from .reconstruct import get_reconstructor

_FAMILY = FAMILY  # kind -> recipe family (kinds.py: moe_experts -> experts, moe_ffn -> ffn, ssm_heads -> ssm)


def scores_in_block(step) -> bool:
    """Uniform widths need no scores up front: the layer-wise pass then scores each block on the
    pruned stream (one calibration pass instead of two)."""
    return step.allocation == "uniform" and (step.reconstruction != "none" or layerwise_extras(step))


def layerwise_extras(step) -> bool:
    """Work that needs the layer-wise pass even without reconstruction."""
    return step.attention == "olica" or step.lincal_layers > 0


def _in_scope(step, cost):
    """The cost-model expression the step's target is a fraction of."""
    return cost.params if step.scope == "all" else cost.linear_params


def _by_block(gids, block_of) -> dict:
    out = defaultdict(list)
    for gid in gids:
        out[block_of[gid]].append(gid)
    if None in out:
        raise RecipeError(f"groups outside the model's repeated blocks cannot be pruned block by block: "
                          f"{out[None]}")
    return dict(out)


class Analyse(Pass):
    name, ensures = "analyse", ("analysis", "cost")

    def run(self, ctx):
        ctx.facts["analysis"] = a = analyse(ctx.model)
        ctx.facts["cost"] = build_cost_model(ctx.model, a)
        return {"groups": len(a.groups), "prunable": len(a.prunable())}


class SelectGroups(StepPass):
    """The groups the step may shrink (kinds, attention unit, protected blocks), the block of every
    group, and (Olica) the attention parts to decompose."""

    name, requires, ensures = "select_groups", ("analysis",), ("groups", "block_of", "attention_parts")

    def run(self, ctx):
        r, a = self.step, ctx["analysis"]
        try:
            blocks = find_blocks(ctx.model)
        except AnalysisError:  # a model without repeated blocks: whole-model scoring only
            blocks = None
        block_of = {g.id: blocks.index_of(g.module) if blocks else None for g in a.prunable()}
        n = len(blocks) if blocks else 0
        ctx.facts["block_of"] = block_of
        has_gqa = any(g.kind == Kind.ATTN_Q_PER_KV for g in a.prunable())
        want_attn = {Kind.ATTN_HEADS} | ({Kind.ATTN_Q_PER_KV} if r.attention_unit == "q_per_kv"
                                         else {Kind.ATTN_KV_GROUPS})
        protected = lambda b: b is not None and (b < r.protect_first or b >= n - r.protect_last)  # noqa: E731
        chosen = []
        for g in a.prunable():
            if _FAMILY.get(g.kind) not in r.kinds:
                continue
            if g.kind in ATTENTION_KINDS and (r.attention == "olica" or (has_gqa and g.kind not in want_attn)):
                continue
            if protected(block_of[g.id]):
                continue
            chosen.append(g)
        ctx.facts["groups"] = chosen
        parts = {}
        if r.attention == "olica" and "attention" in r.kinds:
            parts = {m: p for m, p in attention_parts(a).items()
                     if not protected(blocks.index_of(m) if blocks else None)}
            if not parts:
                raise RecipeError("attention 'olica': no attention with separate value/output projections "
                                  "was found (the analysis offers no prunable attn_v_channels group)")
        ctx.facts["attention_parts"] = parts
        return {"groups": len(chosen), "olica_attentions": len(parts)}


class Score(BlockwisePass):
    """Scores every unit on the dense stream, block by block (the LM head never runs). Under
    ``scores_in_block`` it defers: ``scores`` is None and the blocks are scored later."""

    name, requires, ensures = "score", ("groups", "block_of", "analysis"), ("scores",)
    stream = Stream.DENSE

    def windows(self):
        """The first ``allocation_samples`` calibration windows (all when unset)."""
        n = self.step.allocation_samples
        return self.env.windows if n is None else self.env.windows[:n]

    def run(self, ctx):
        crit = get_criterion(self.step.criterion)
        prepare = getattr(crit, "prepare", None)  # a criterion with a pass of its own (gradients: needs logits)
        if scores_in_block(self.step) and prepare is None:
            ctx.facts["scores"] = None
            return {"criterion": crit.name, "deferred_to_blocks": True}
        groups, block_of = ctx["groups"], ctx["block_of"]
        if prepare is not None:
            prepare(ctx.model, self.windows(), groups, self.env.batch_size)
        self.criterion = crit  # the instance that prepared is the one that scores
        if not (crit.needs or crit.needs_heads or crit.producer_needs):
            ctx.facts["scores"] = {g.id: crit.score(g, ctx.model, {}) for g in groups}
            return {"criterion": crit.name, "calibrated": False}
        if any(block_of[g.id] is None for g in groups):  # no repeated blocks: one whole-model pass
            req = replace(stats_request(groups, crit.needs, crit.needs_heads, crit.producer_needs),
                          exclude_first_token=self.step.skip_first_token)
            stats = self.env.engine.calibrate(ctx.model, self.windows(), req, batch_size=self.env.batch_size,
                                              layerwise=False)
            ctx.facts["scores"] = {g.id: crit.score(g, ctx.model, stats) for g in groups}
            return {"criterion": crit.name, "whole_model": True}
        report = super().run(ctx)
        return {"criterion": crit.name, **report}

    def ops(self, ctx):
        by_block = _by_block([g.id for g in ctx["groups"]], ctx["block_of"])
        return [ScoreBlocks(ctx.model, ctx["analysis"], by_block, self.criterion)]

    def finish(self, ctx, ops):
        ctx.facts["scores"] = ops[0].scores
        return {}


class Allocate(StepPass):
    """Kept units per group meeting the step's target (``passes/allocate.py``)."""

    name, requires, ensures = "allocate", ("scores", "cost", "groups"), ("allocation",)
    optional = ("costs",)  # measured allocation: the probe's cost curves

    def run(self, ctx):
        r, cost = self.step, ctx["cost"]
        alloc = allocate(ctx["groups"], ctx["scores"], cost, _in_scope(r, cost), r.target, r.allocation,
                         r.channel_multiple, cumulative=getattr(get_criterion(r.criterion), "cumulative_costs", False),
                         max_extra=r.max_extra_removal, scale=r.global_scale, costs=ctx.facts.get("costs"))
        ctx.facts["allocation"] = alloc  # plan None: widths only, units picked block by block
        return {"scope": r.scope, "target": r.target, "achieved": round(alloc.achieved, 6),
                "removed_params": alloc.removed, "in_scope_params": alloc.total}


class OlicaSplit(StepPass):
    """Olica's ratio split between Q/K ranks, rotated value channels and FFN widths (``olica/split.py``)."""

    name, requires, ensures = "olica_split", ("cost", "groups", "attention_parts"), ("allocation",)
    optional = ("scores",)  # global FFN allocation: the FFN groups' scores

    def run(self, ctx):
        r, cost = self.step, ctx["cost"]
        ffn = [g for g in ctx["groups"] if g.kind not in ATTENTION_KINDS]
        sp = olica_solve(ctx.model, ctx["attention_parts"], ffn, cost, _in_scope(r, cost), r.target, r.olica_k,
                         r.channel_multiple, r.allocation, ctx.facts.get("scores"), r.global_scale)
        ctx.facts["allocation"] = sp
        return {"scope": r.scope, "target": r.target, "achieved": round(sp.achieved, 6),
                "removed_params": sp.removed, "in_scope_params": sp.total, "split": "olica",
                "s_qk": round(sp.s_qk, 4), "s_vo": round(sp.s_vo, 4),
                "v_kept": sorted(set(sp.v_kept.values())), "qk_ranks": sorted(set(sp.ranks.values())),
                "ffn_kept": sorted(set(sp.ffn_kept.values())), "ffn_allocation": r.allocation}


class RemovePlanned(Pass):
    """No layer-wise work: slice the planned units away in one surgery."""

    name, requires, ensures = "remove_planned", ("allocation", "analysis"), ("plan", "pruned")

    def run(self, ctx):
        plan = ctx["allocation"].plan or {}
        if plan:
            prune(ctx.model, plan, ctx["analysis"], verify=False)
        ctx.facts["plan"], ctx.facts["pruned"] = plan, True
        return {"reconstruction": "none", "groups": len(plan)}


class ReconstructBlocks(BlockwisePass):
    """Layer by layer on the pruned stream, the step's ops in order: (Olica) rotate V/O and factorise
    Q/K; (linear calibration, GOA) capture what they need from the unchanged block; choose, fold and
    remove the units; (GOA) refit the consumers; (linear calibration) fit each pruned FFN's residual."""

    name = "reconstruct_blocks"
    requires = ("allocation", "analysis", "block_of", "attention_parts")
    ensures = ("plan", "pruned", "lincal_candidates")

    def ops(self, ctx):
        r, a, alloc = self.step, ctx["analysis"], ctx["allocation"]
        rec = get_reconstructor(r.reconstruction)
        by_block = _by_block(list(alloc.kept), ctx["block_of"])
        block_refit = rec.refits and rec.refit_target == "block"
        ops = [CaptureStreamTargets({}, r.refit_scope == "all")] if block_refit and r.refit_scope != "pruned" else []
        parts = ctx["attention_parts"]
        if parts:
            pb = defaultdict(list)
            blocks = find_blocks(ctx.model)
            for p in parts.values():
                pb[blocks.index_of(p.module)].append(p)
            ops.append(OlicaAttention(ctx.model, a, dict(pb), alloc, r.olica_qk == "whitened"))
        if r.lincal_layers > 0:
            ops.append(CaptureForLinCal(ctx.model, a, by_block))
        if rec.refits and not block_refit:
            ops.append(CaptureRefitTargets(ctx.model, a, by_block))
        unchanged = not any(op.modifies for op in ops)  # the fold's statistics still describe the block
        plan = None if r.units_on == "pruned" else alloc.plan  # None: each block scores its own units
        ops.append(RemoveUnits(ctx.model, a, by_block, alloc.kept, plan, get_criterion(r.criterion), rec,
                               r.damping))
        if block_refit:
            ops.append(BlockRefit(by_block, r.refit_ridge, r.skip_first_token,
                                  gram_from_stats=unchanged, scope=r.refit_scope))
        elif rec.refits:
            ops.append(Refit(by_block, r.refit_ridge, r.skip_first_token))
        if r.lincal_layers > 0:
            rank = max(1, int(round(r.lincal_rank_ratio * _lincal.hidden_size(ctx.model))))
            ops.append(FitLinCal(by_block, rank, r.lincal_damping))
        return ops

    def finish(self, ctx, ops):
        plan, candidates, factorised = {}, [], 0
        for op in ops:
            plan.update(getattr(op, "final_plan", {}))
            candidates.extend(getattr(op, "candidates", []))
            factorised += getattr(op, "factorised", 0)
        ctx.facts["plan"], ctx.facts["pruned"], ctx.facts["lincal_candidates"] = plan, True, candidates
        refit = [n for op in ops for n in getattr(op, "refit", [])]
        skipped = [n for op in ops for n in getattr(op, "skipped", [])]
        extra = {"block_refit": len(refit), "block_refit_skipped": skipped} if refit or skipped else {}
        return {**extra, "reconstruction": self.step.reconstruction, "ops": [op.name for op in ops],
                "olica_attentions": len(ctx["attention_parts"]), "factorised_qk": factorised,
                "scored_on": ("pruned stream, per block" if ctx["allocation"].plan is None or self.step.units_on == "pruned"
                              else "dense stream")}


class InsertLinearCalibration(StepPass):
    """Insert the ``lincal_layers`` fitted calibrations whose residual fit is best (mean Pearson r)."""

    name, requires = "insert_linear_calibration", ("lincal_candidates",)

    def run(self, ctx):
        cands = sorted(ctx["lincal_candidates"], key=lambda c: -c.mean_r)
        chosen = cands[: self.step.lincal_layers]
        for c in chosen:
            _lincal.insert(ctx.model, c)
        return {"inserted": [{"module": c.module, "rank": int(c.down.shape[0]), "mean_r": round(c.mean_r, 4),
                              "residual_error_ratio": round(c.error_after / max(c.error_before, 1e-30), 4)}
                             for c in chosen], "candidates": len(cands)}


class Verify(Pass):
    """Re-capture the pruned model and check every group has its planned size."""

    name, requires = "verify", ("pruned", "plan", "analysis")

    def run(self, ctx):
        verify_pruned(ctx.model, ctx["analysis"], ctx["plan"])
        return {"verified_groups": len(ctx["plan"])}
