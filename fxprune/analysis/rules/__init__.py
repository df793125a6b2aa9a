"""Per-ATen-op coupling rules, one small file per op family.

A rule is ``fn(ctx: RuleContext) -> None`` registered for op packet names (``"aten.linear"``) or
exact overloads (``"aten.split.Tensor"``). An op with no rule blocks every axis it touches, and the
analysis report names it. ``IGNORED`` ops produce no tensor that carries channels.
"""
from __future__ import annotations

import importlib
import pkgutil

RULES: dict = {}
IGNORED: set = set()


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def ignore(*names):
    IGNORED.update(names)


def find_rule(op: str, packet: str):
    return RULES.get(op) or RULES.get(packet)


def _load_all():
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")


_load_all()
