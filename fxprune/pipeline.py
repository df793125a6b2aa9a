"""Run a recipe: every step's planning passes then its applying passes, step after step.

``prune_model(model, recipe, windows)`` changes ``model`` in place and returns a ``PruneOutcome``;
``plan_model(model, recipe, windows)`` is the dry run: the planning passes of every step, nothing
changed. Calibration windows come from the caller, or are drawn from the recipe's ``calibration``
block with the model's tokenizer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .passes.base import PassContext, PassManager
from .recipe import Recipe, load_recipe
from .report import step_report
from .steps import StepEnv
from .surgery import count_params


@dataclass
class PruneOutcome:
    """The pruned model (the same object, changed in place), the structured plan (group id -> kept
    units, over every structured step) and the run report (``fxprune.report``)."""

    model: torch.nn.Module
    plan: dict
    report: dict = field(default_factory=dict)


def calibration_for(model, recipe: Recipe, windows=None, tokenizer=None, data_root=None):
    """``(ids [n, L] or None, protocol dict)``: the given windows (a tensor or ``data.Windows``), or
    the recipe's calibration windows drawn with ``tokenizer`` (a byte tokenizer for tiny models)."""
    from .data import Windows, calibration_windows, tokenizer_for
    if windows is None and recipe.needs_calibration:
        if tokenizer is None:
            from .loading import LoadedModel
            tokenizer = tokenizer_for(LoadedModel(model, None, ""))
        windows = calibration_windows(tokenizer, recipe.calibration, model=model, root=data_root)
    if isinstance(windows, Windows):
        return windows.ids, windows.protocol()
    if windows is None:
        return None, {}
    return windows, {"windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]), "source": "given"}


def _env(recipe: Recipe, ids, engine, **more) -> StepEnv:
    from .calibration import Engine
    return StepEnv(ids, engine or Engine(), recipe.calibration.batch_size, **more)


def prune_model(model: torch.nn.Module, recipe: Any, windows: Any = None, engine: Any = None, *,
                tokenizer: Any = None, data_root: str | None = None, artifacts: Any = None,
                source: str = "") -> PruneOutcome:
    """Prune ``model`` in place by ``recipe`` (anything ``load_recipe`` takes) on calibration
    ``windows`` (token ids [n, L] or ``data.Windows``; drawn from the recipe when None).
    ``artifacts``: the directory files of export steps are written to; ``source``: the model spec the
    model was loaded from (an export copies a GGUF source's vocabulary)."""
    recipe = load_recipe(recipe)
    env = _env(recipe, None, engine, artifacts=artifacts, tokenizer=tokenizer, source=source)
    for step in recipe.steps:  # before any work: a step that could not finish refuses now
        step.check(env)
    ids, protocol = calibration_for(model, recipe, windows, tokenizer, data_root)
    env = replace(env, windows=ids)
    t0 = time.perf_counter()
    before = count_params(model)
    steps, plan = [], {}
    for step in recipe.steps:
        ctx = PassManager(step.planning(env) + step.applying(env)).run(PassContext(model))
        steps.append(step_report(step, ctx.results, ctx.facts))
        plan.update(ctx.facts.get("plan") or {})
    report = {"recipe": recipe.to_dict(), "calibration": protocol, "params_before": before,
              "params_after": count_params(model), "seconds": round(time.perf_counter() - t0, 3), "steps": steps}
    return PruneOutcome(model, plan, report)


def plan_model(model: torch.nn.Module, recipe: Any, windows: Any = None, engine: Any = None, *,
               tokenizer: Any = None, data_root: str | None = None) -> list[PassContext]:
    """The dry run: each step's planning passes on ``model`` (unchanged). Steps after the first are
    planned on the input model too (their widths are those the earlier steps leave)."""
    recipe = load_recipe(recipe)
    ids, _ = calibration_for(model, recipe, windows, tokenizer, data_root)
    env = _env(recipe, ids, engine)
    return [PassManager(step.planning(env)).run(PassContext(model)) for step in recipe.steps]
