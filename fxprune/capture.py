"""Capture: ``torch.export.export(..., strict=False)`` into an ATen-level FX graph.

The captured graph is analysis input only; pruning always edits the eager model. ``CapturedGraph``
maps every placeholder to the parameter/buffer it stands for and every node to its owning module.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from .errors import CaptureError


@dataclass
class CapturedGraph:
    """An exported program plus the lookups the analysis needs.

    ``params``: placeholder name -> parameter FQN; ``buffers``: placeholder name -> buffer/constant
    FQN; ``user_inputs``: placeholder names of the example inputs.
    """

    model_class: str
    graph: fx.Graph
    params: dict[str, str]
    buffers: dict[str, str]
    user_inputs: list[str]
    capture_seconds: float
    exported: object = field(repr=False, default=None)

    def module_of(self, node: fx.Node) -> str:
        """Qualified path of the innermost module that ran ``node`` ('' if none)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path = list(stack.values())[-1][0]
        return _clean_path(path)


def _clean_path(path: str) -> str:
    # nn_module_stack paths look like "L['self'].model.layers[0].mlp" in some versions, and like
    # "model.layers.0.mlp" in others; normalise to the named_modules() form.
    path = path.replace("L['self'].", "").replace("L['self']", "")
    out, i = [], 0
    while i < len(path):
        c = path[i]
        if c == "[":
            j = path.index("]", i)
            out.append("." + path[i + 1:j].strip("'\""))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out).lstrip(".")


def example_inputs(model: nn.Module, seq_len: int = 7, batch: int = 1) -> dict:
    """Small example kwargs for a transformers model: ``input_ids`` (+ ``use_cache=False``), on the device
    of the model's first parameter (a model moved to a GPU is captured there)."""
    cfg = getattr(model, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 32) or 32)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(low=min(5, vocab - 1), high=vocab, size=(batch, seq_len), generator=g)
    first = next(model.parameters(), None)
    if first is not None and first.device.type != "meta":
        ids = ids.to(first.device)
    kwargs = {"input_ids": ids}
    try:
        sig = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        sig = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in getattr(sig, "values", lambda: [])())
    if "use_cache" in sig or (takes_kwargs and hasattr(cfg, "use_cache")):
        kwargs["use_cache"] = False
    return kwargs


@contextlib.contextmanager
def capture_mode(model: nn.Module):
    """Run ``model`` the way it is captured: transformers mixture-of-experts layers on their
    ``batched_mm`` path (each token's expert weights gathered by index, which the analysis can
    follow) instead of ``grouped_mm`` (a custom op fed data-dependent offsets). Restored after."""
    getter = getattr(model, "get_experts_implementation", None)
    setter = getattr(model, "set_experts_implementation", None)
    old = None
    if callable(getter) and callable(setter):
        try:
            old = getter()
            if any(v not in (None, "eager", "batched_mm") for v in old.values()):
                setter({k: "batched_mm" for k in old})
            else:
                old = None
        except Exception:  # a model that cannot switch keeps its own path
            old = None
    try:
        yield
    finally:
        if old is not None:
            setter(old)


def capture(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> CapturedGraph:
    """Export ``model`` (eval mode, no grad) with ``strict=False``.

    With no inputs given, ``example_inputs(model)`` is used. Raises ``CaptureError`` naming the
    model class and the underlying exception when export fails.
    """
    if not args and kwargs is None:
        kwargs = example_inputs(model)
    kwargs = kwargs or {}
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), capture_mode(model):
            ep = torch.export.export(model, tuple(args), kwargs, strict=False)
    except Exception as e:  # export raises many types; keep the cause, name the class
        raise CaptureError(type(model).__name__, e) from e
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    sig = ep.graph_signature
    params = dict(sig.inputs_to_parameters)
    buffers = dict(sig.inputs_to_buffers)
    buffers.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    user_inputs = list(sig.user_inputs)
    return CapturedGraph(type(model).__name__, ep.graph, params, buffers, user_inputs, seconds, ep)
