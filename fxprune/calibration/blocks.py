"""Find a model's repeated blocks and capture what enters the first one.

``find_blocks(model)``: the longest ``nn.ModuleList`` whose children all have the same class
(decoder layers of LLaMA/Qwen2/Mistral, GPT-2 ``h``, OPT ``layers``, BERT ``layer``, Mamba ``layers``).
Ties go to the first found in ``named_modules`` order. No per-family table is needed.

``capture_block_inputs(model, block, batch)``: runs the model until ``block`` is called and returns
the positional and keyword arguments it received (hidden states, position embeddings, attention
mask, …), then stops the forward by raising an internal exception: nothing after block 0 runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AnalysisError
from ..models.runtime import CACHE_KWARGS


@dataclass(frozen=True)
class BlockList:
    """The repeated blocks of a model: ``name`` is the ModuleList's qualified name."""

    name: str
    blocks: torch.nn.ModuleList

    def __len__(self) -> int:
        return len(self.blocks)

    def qualified(self, i: int) -> str:
        return f"{self.name}.{i}" if self.name else str(i)

    def index_of(self, module: str) -> int | None:
        """The block that contains the module called ``module`` (or is it), else None."""
        prefix = f"{self.name}." if self.name else ""
        if not module.startswith(prefix):
            return None
        head = module[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() and int(head) < len(self.blocks) else None


def find_blocks(model: torch.nn.Module) -> BlockList:
    """The longest ``ModuleList`` of identical-class modules in ``model``."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            if len({type(m) for m in mod}) == 1 and (best is None or len(mod) > len(best[1])):
                best = (name, mod)
    if best is None:
        raise AnalysisError(f"{type(model).__name__}: no nn.ModuleList of identical blocks found; "
                            "layer-wise calibration needs a repeated block list")
    return BlockList(*best)


@dataclass
class BlockInput:
    """Arguments one block call received; ``hidden`` is the hidden-state tensor among them."""

    args: tuple
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> "BlockInput":
        if self.args:
            return BlockInput((hidden,) + tuple(self.args[1:]), self.kwargs)
        return BlockInput((), {**self.kwargs, "hidden_states": hidden})


class _Stop(Exception):
    pass


def capture_block_inputs(model: torch.nn.Module, block: torch.nn.Module, model_kwargs: dict) -> BlockInput:
    """Arguments of the first call of ``block`` when running ``model(**model_kwargs)``; stops there."""
    seen: list[BlockInput] = []

    def hook(module, args, kwargs):
        seen.append(BlockInput(tuple(args), dict(kwargs)))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**model_kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise AnalysisError(f"{type(model).__name__}: the forward pass never called the first block")
    inp = seen[0]
    # Caches must not be mutated by replaying the block: drop them.
    for key in CACHE_KWARGS:
        if key in inp.kwargs:
            inp.kwargs[key] = None
    if "use_cache" in inp.kwargs:
        inp.kwargs["use_cache"] = False
    return inp


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a block returned (a tensor, or the first element of a tuple/ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    raise AnalysisError(f"cannot find hidden states in block output of type {type(out).__name__}")
