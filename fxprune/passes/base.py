"""The pass contract and the pass manager.

A pass declares what it ``requires`` from the context (names of facts earlier passes produced) and
what it ``ensures``; ``run`` returns a ``PassResult`` with a short report. The manager runs a named
list, checks the contracts, and on failure raises ``PassError`` naming the failing pass and the
passes before it (the original exception is kept as ``__cause__``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import FxPruneError


class PassError(FxPruneError):
    """A pass failed or broke its contract; names the pass and the ones that ran before it."""

    def __init__(self, name: str, before: list[str], reason: str):
        self.pass_name, self.before = name, before
        super().__init__(f"pass {name!r} failed (after {before or 'nothing'}): {reason}")


@dataclass
class PassResult:
    name: str
    seconds: float = 0.0
    report: dict = field(default_factory=dict)


@dataclass
class PassContext:
    """Mutable execution state shared by passes: the model and named facts (analysis, stats, plan...)."""

    model: Any
    facts: dict = field(default_factory=dict)
    results: list[PassResult] = field(default_factory=list)

    def __getitem__(self, key):
        return self.facts[key]

    def __contains__(self, key):
        return key in self.facts


class Pass:
    """Base class: subclasses set ``name``, ``requires``, ``ensures`` and implement ``run``."""

    name: ClassVar[str] = "pass"
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: PassContext) -> dict:  # returns the report
        raise NotImplementedError


class PassManager:
    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def run(self, ctx: PassContext) -> PassContext:
        done: list[str] = []
        for p in self.passes:
            missing = [r for r in p.requires if r not in ctx.facts]
            if missing:
                raise PassError(p.name, done, f"requires {missing}, which no earlier pass produced")
            t0 = time.perf_counter()
            try:
                report = p.run(ctx) or {}
            except FxPruneError as e:
                raise PassError(p.name, done, f"{type(e).__name__}: {e}") from e
            except Exception as e:
                raise PassError(p.name, done, f"{type(e).__name__}: {e}") from e
            absent = [k for k in p.ensures if k not in ctx.facts]
            if absent:
                raise PassError(p.name, done, f"did not produce {absent} as it promises")
            ctx.results.append(PassResult(p.name, time.perf_counter() - t0, report))
            done.append(p.name)
        return ctx
