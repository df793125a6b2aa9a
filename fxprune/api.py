"""The public verbs, re-exported by ``fxprune``: load, prune, sparsify, plan, evaluate, save, load_pruned.

Each is a thin, documented entry into the modules that do the work; the README's Python snippets
are run as tests against exactly these names.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch


def load(spec: str, dtype: torch.dtype = torch.float32):
    """A ``LoadedModel`` (``.model``, ``.tokenizer``, ``.source``): ``smollm2``, ``minilm``,
    ``tiny:<family>``, a ``.gguf`` file or a model directory (a pruned checkpoint included)."""
    from .loading import load_model
    return load_model(spec, dtype)


def load_pruned(path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A checkpoint written by fxprune (per-layer structure restored by fxprune's own code)."""
    from .checkpoint import load_pruned as _load
    return _load(path, dtype)


def prune(model: torch.nn.Module, recipe: Any, calibration: Any = None, engine: Any = None, *,
          tokenizer: Any = None, data_root: str | None = None, artifacts: Any = None, source: str = ""):
    """Prune ``model`` in place by ``recipe`` (a ``Recipe``, a dict, a YAML/JSON file or a shipped
    recipe name) with ``calibration`` windows (token ids [n, L]; drawn from the recipe's calibration
    block with ``tokenizer`` when None). Returns a ``PruneOutcome`` (model, plan, report).
    A recipe with an ``export`` step writes its file into the directory ``artifacts``."""
    from .pipeline import prune_model
    return prune_model(model, recipe, calibration, engine, tokenizer=tokenizer, data_root=data_root,
                       artifacts=artifacts, source=source)


def sparsify(model: torch.nn.Module, method: str, sparsity: Any, calibration: Any = None, *,
             tokenizer: Any = None, layers: dict | None = None, data_root: str | None = None, **options):
    """``prune`` with a one-step sparsity recipe: ``method`` (``magnitude``, ``wanda``, ``sparsegpt``,
    ``mrp``), ``sparsity`` (``"2:4"``, ``0.5``...), the method's ``options`` and a ``layers``
    selection. Equivalent to the recipe ``{steps: [{method: {sparsity, layers, **options}}]}``."""
    step = {"sparsity": sparsity, **options, **({"layers": layers} if layers else {})}
    return prune(model, {"steps": [{method: step}]}, calibration, tokenizer=tokenizer, data_root=data_root)


def plan(model: torch.nn.Module, recipe: Any, calibration: Any = None, *, tokenizer: Any = None,
         data_root: str | None = None) -> list[dict]:
    """The dry run: per step, the planning passes' reports (what would be removed), model unchanged."""
    from .pipeline import plan_model
    return [{r.name: r.report for r in ctx.results}
            for ctx in plan_model(model, recipe, calibration, tokenizer=tokenizer, data_root=data_root)]


def evaluate(model: torch.nn.Module, tokenizer: Any = None, *, ppl: Sequence[str] = ("wikitext2",),
             seq_len: int = 512, windows: int | None = None, tasks: Sequence[str] = (), limit: int | None = None,
             data_root: str | None = None, engine: Any = None) -> dict:
    """Perplexity on each of ``ppl`` (non-overlapping ``seq_len`` windows, the first ``windows``) and
    zero-shot accuracy on ``tasks`` (the first ``limit`` items): ``{"ppl": {...}, "tasks": {...}}``."""
    from .calibration import Engine
    from .data import ByteTokenizer, evaluation_windows
    from .evaluation.tasks import load_task
    engine = engine or Engine()
    if tokenizer is None:
        cfg = model.config
        tokenizer = ByteTokenizer(cfg.vocab_size, getattr(cfg, "bos_token_id", None))
    out = {"ppl": {}, "tasks": {}}
    with torch.no_grad():
        for name in ppl:
            w = evaluation_windows(tokenizer, name, seq_len, windows, root=data_root)
            out["ppl"][name] = engine.perplexity(model, w.ids).ppl
        for name in tasks:
            items, _ = load_task(name, data_root, limit)
            r = engine.zeroshot(model, tokenizer, items)
            out["tasks"][name] = {"acc": r.acc, "acc_norm": r.acc_norm}
    return out


def save(model: torch.nn.Module, out_dir, tokenizer: Any = None, report: dict | None = None):
    """Write ``model`` (+ tokenizer, + ``fxprune_report.json``) as a checkpoint directory, atomically."""
    from .checkpoint import save_pruned
    return save_pruned(model, out_dir, tokenizer=tokenizer, extra=report)
