"""Sequential layer-wise calibration driver (kept small: it will move onto the shared layer-wise engine).

Flow (the pruned stream, as SparseGPT's ``llama_sequential``):
  1. capture the inputs (args and kwargs) of decoder block 0 for every calibration batch, with a
     pre-hook that raises ``_StopForward`` so nothing after block 0 runs;
  2. for each block in order: run every batch through it with forward hooks that accumulate
     ``H = 2XXᵀ`` for each selected ``nn.Linear`` of the block; then sparsify **all linears of the
     block at once** (every one sees the block's inputs from the already-sparsified earlier blocks,
     but the dense versions of its own block's sub-layers); then recompute the block's outputs with
     the sparse weights: they are the next block's inputs.
Mamba: the HF torch path calls ``dt_proj`` as ``dt_proj.weight @ ...`` (its forward hook never fires),
so its input is tapped from ``x_proj``'s output (the first ``time_step_rank`` channels); see
``DERIVED_INPUTS``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import FxPruneError
from .config import SparsityRecipe
from .hessian import HessianAccumulator
from .masks import MaskError, check_pattern
from .methods import prune_weight
from .report import LayerReport, SparsityResult


class SparsityError(FxPruneError):
    """Sparsification failed on a model or a module (names it)."""


class _StopForward(Exception):
    pass


# Where to find the decoder blocks, by attribute path.
BLOCK_PATHS = ("model.layers", "backbone.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers",
               "transformer.layers", "model.layers")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(prefix, blocks)`` of the decoder stack; raises ``SparsityError`` naming the model class."""
    for path in BLOCK_PATHS:
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return path, obj
    raise SparsityError(f"{type(model).__name__}: no decoder block list found (looked for {', '.join(BLOCK_PATHS)})")


def _mamba_dt_tap():
    """``dt_proj``'s input is ``x_proj(x)[..., :time_step_rank]`` in HF's torch Mamba path."""
    def tap(mixer, x_proj_out):
        return x_proj_out[..., : mixer.time_step_rank]
    return "x_proj", "dt_proj", tap


# Per parent class name: (source linear, target linear, fn(parent, source_output) -> target_input).
DERIVED_INPUTS: dict[str, list[tuple[str, str, Callable]]] = {
    "MambaMixer": [_mamba_dt_tap()],
}


def _linears(block: nn.Module, prefix: str, recipe: SparsityRecipe) -> dict[str, nn.Linear]:
    return {f"{prefix}.{n}": m for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and recipe.layers.selected(f"{prefix}.{n}")}


@dataclass
class _Batch:
    """One calibration batch at a block boundary: ``block(hidden, *rest, **kwargs)``."""

    hidden: torch.Tensor
    rest: list
    kwargs: dict


def _capture_block0_inputs(model, blocks, calib_batches) -> list[_Batch]:
    captured: list[_Batch] = []

    def pre_hook(mod, args, kwargs):
        kwargs = dict(kwargs)
        if args:
            captured.append(_Batch(args[0], list(args[1:]), kwargs))
        else:
            captured.append(_Batch(kwargs.pop("hidden_states"), [], kwargs))
        raise _StopForward

    h = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for ids in calib_batches:
            ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        h.remove()
    if not captured:
        raise SparsityError(f"{type(model).__name__}: no calibration batch reached decoder block 0")
    return captured


def _run_block(block, batch: _Batch):
    out = block(batch.hidden, *batch.rest, **batch.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _attach_stats(block, prefix, linears, accs):
    """Forward hooks that feed each selected linear's inputs to its accumulator."""
    hooks = []
    by_module = {m: name for name, m in linears.items()}
    seen: dict = {}  # (data_ptr, shape, dtype) of inputs within one block call -> (first linear, tensor)

    def block_pre(mod, args):
        seen.clear()
    hooks.append(block.register_forward_pre_hook(block_pre))
    for name, lin in linears.items():
        def fwd(mod, inp, out, name=name):
            x = inp[0]
            key = (x.data_ptr(), tuple(x.shape), x.dtype)
            first, _ = seen.setdefault(key, (name, x))  # holding x keeps its memory from being reused
            if first != name and accs[first].d_in == accs[name].d_in:
                accs[name] = accs[first]  # same input tensor (q/k/v, gate/up): one shared Hessian
            else:
                accs[name].add_batch(x)
        hooks.append(lin.register_forward_hook(fwd))
    for pname, parent in block.named_modules():
        for src, dst, fn in DERIVED_INPUTS.get(type(parent).__name__, []):
            dst_mod = getattr(parent, dst, None)
            src_mod = getattr(parent, src, None)
            if dst_mod is None or src_mod is None or dst_mod not in by_module:
                continue
            dst_name = by_module[dst_mod]

            def fwd(mod, inp, out, parent=parent, fn=fn, dst_name=dst_name):
                accs[dst_name].add_batch(fn(parent, out))
            hooks.append(src_mod.register_forward_hook(fwd))
    return hooks


def _output_error(delta: torch.Tensor, acc: HessianAccumulator | None) -> float | None:
    """Mean over calibration tokens of ``||δW x||²`` (``tr(δW G δWᵀ) / n``, undamped)."""
    if acc is None or acc.n == 0:
        return None
    d = delta.double()
    return float(((d @ acc.gram) * d).sum() / acc.n)


def _sparsify_linear(name, lin, acc, recipe, reports, on_skip):
    pattern = recipe.layers.pattern_for(name, recipe.pattern)
    W = lin.weight.data
    try:
        check_pattern(pattern, tuple(W.shape))
    except MaskError as e:
        on_skip(name, str(e))
        reports.append(LayerReport(name, tuple(W.shape), "skipped: " + str(e), 0, W.numel(), None, 0.0))
        return
    t0 = time.perf_counter()
    res = prune_weight(W.float(), acc, pattern, recipe.method)
    new = res.weight.to(W.dtype)
    err = _output_error(W.float() - new.float(), acc)
    lin.weight.data.copy_(new)
    zeros = int((lin.weight.data == 0).sum())
    reports.append(LayerReport(name, tuple(W.shape), pattern.label, zeros, W.numel(), err,
                               time.perf_counter() - t0))


@torch.no_grad()
def run_sparsity_recipe(model: nn.Module, recipe, calib_batches: Iterable[torch.Tensor] | None,
                        log: Callable[[str], None] | None = None) -> SparsityResult:
    """Sparsify ``model`` in place following ``recipe``; returns the per-layer report.

    ``recipe``: a ``SparsityRecipe``, a recipe dict (as read from YAML/JSON), a recipe file path or a
    built-in recipe name (parsed by ``fxprune.sparsity.recipe.load_recipe``).

    ``calib_batches``: token-id tensors ``(B, L)`` or ``(L,)``; ignored by methods that need no
    calibration (magnitude). Linear layers whose width cannot carry the pattern (e.g. ``d_in`` not a
    multiple of M) are left dense and reported as skipped.
    """
    if not isinstance(recipe, SparsityRecipe):
        from .recipe import load_recipe
        recipe = load_recipe(recipe)
    log = log or (lambda s: None)
    t_start = time.perf_counter()
    was_training = model.training
    model.eval()
    prefix, blocks = find_blocks(model)
    reports: list[LayerReport] = []
    skipped = lambda name, why: log(f"skip {name}: {why}")  # noqa: E731
    needs = getattr(recipe.method, "needs_calibration", True)
    if not needs:
        for i, block in enumerate(blocks):
            for name, lin in _linears(block, f"{prefix}.{i}", recipe).items():
                _sparsify_linear(name, lin, None, recipe, reports, skipped)
        return SparsityResult(recipe, reports, time.perf_counter() - t_start, 0)
    batches = list(calib_batches or [])
    if not batches:
        raise SparsityError(f"{type(model).__name__}: method {type(recipe.method).__name__} needs calibration batches")
    inputs = _capture_block0_inputs(model, blocks, batches)
    n_tokens = sum(b.hidden.shape[0] * b.hidden.shape[1] for b in inputs)
    for i, block in enumerate(blocks):
        bprefix = f"{prefix}.{i}"
        linears = _linears(block, bprefix, recipe)
        accs = {n: HessianAccumulator(m.in_features, n) for n, m in linears.items()}
        hooks = _attach_stats(block, bprefix, linears, accs)
        try:
            for b in inputs:
                _run_block(block, b)
        finally:
            for h in hooks:
                h.remove()
        for name, lin in linears.items():
            _sparsify_linear(name, lin, accs[name], recipe, reports, skipped)
        for acc in accs.values():
            acc.free()
        for b in inputs:
            b.hidden = _run_block(block, b)
        log(f"block {i}: {len(linears)} linears sparsified ({time.perf_counter() - t_start:.1f}s)")
    model.train(was_training)
    return SparsityResult(recipe, reports, time.perf_counter() - t_start, n_tokens)
