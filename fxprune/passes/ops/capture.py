"""Run a block over its inputs and record what some of its modules saw and produced."""
from __future__ import annotations

import torch


def capture_io(block, modules, inputs) -> list[list[tuple]]:
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
