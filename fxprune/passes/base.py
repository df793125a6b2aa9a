"""The pass contract and the pass manager.

A pass declares the facts it ``requires`` (must exist), those it may read if present (``optional``)
and those it ``ensures`` (produces). ``run(ctx)`` returns a short report dict. The manager runs a
named list and enforces the contracts: while a pass runs, ``ctx.facts`` is a view that refuses to
read a fact the pass did not declare and to write one it does not ensure; after it, every ensured
fact must exist. A failure raises ``PassError`` naming the failing pass and the passes before it
(the original exception is kept as ``__cause__``).
"""
from __future__ import annotations

import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import FxPruneError


class PassError(FxPruneError):
    """A pass failed or broke its contract; names the pass and the ones that ran before it."""

    def __init__(self, name: str, before: list[str], reason: str):
        self.pass_name, self.before = name, before
        super().__init__(f"pass {name!r} failed (after {before or 'nothing'}): {reason}")


class ContractError(FxPruneError):
    """A pass read or wrote a fact it did not declare."""


@dataclass
class PassResult:
    name: str
    seconds: float = 0.0
    report: dict = field(default_factory=dict)


class Facts(MutableMapping):
    """The facts a pass may see: reads limited to ``readable``, writes to ``writable``."""

    def __init__(self, store: dict, owner: str, readable: set, writable: set):
        self._store, self._owner, self._readable, self._writable = store, owner, readable, writable

    def __getitem__(self, key):
        if key not in self._readable and key not in self._writable:
            raise ContractError(f"pass {self._owner!r} read fact {key!r}, which it does not declare "
                                f"(requires/optional: {sorted(self._readable)})")
        return self._store[key]

    def __setitem__(self, key, value):
        if key not in self._writable:
            raise ContractError(f"pass {self._owner!r} wrote fact {key!r}, which it does not ensure "
                                f"(ensures: {sorted(self._writable)})")
        self._store[key] = value

    def __delitem__(self, key):
        self[key] = None  # a contract check
        del self._store[key]

    def __contains__(self, key):
        return key in self._store and (key in self._readable or key in self._writable)

    def __iter__(self):
        return iter(k for k in self._store if k in self._readable or k in self._writable)

    def __len__(self):
        return sum(1 for _ in self)


@dataclass
class PassContext:
    """Execution state shared by passes: the model and named facts (analysis, scores, plan...)."""

    model: Any
    facts: Any = field(default_factory=dict)
    results: list[PassResult] = field(default_factory=list)

    def __getitem__(self, key):
        return self.facts[key]

    def __contains__(self, key):
        return key in self.facts


class Pass:
    """Base class: subclasses set ``name``, ``requires``, ``optional``, ``ensures`` and implement ``run``."""

    name: ClassVar[str] = "pass"
    requires: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: PassContext) -> dict:  # returns the report
        raise NotImplementedError


class StepPass(Pass):
    """A pass of a recipe step: keeps the step's config as ``self.step``."""

    def __init__(self, step):
        self.step = step


class PassManager:
    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def run(self, ctx: PassContext) -> PassContext:
        done: list[str] = []
        store = ctx.facts
        for p in self.passes:
            missing = [r for r in p.requires if r not in store]
            if missing:
                raise PassError(p.name, done, f"requires {missing}, which no earlier pass produced")
            view = PassContext(ctx.model, Facts(store, p.name, set(p.requires) | set(p.optional), set(p.ensures)),
                               ctx.results)
            t0 = time.perf_counter()
            try:
                report = p.run(view) or {}
            except Exception as e:
                raise PassError(p.name, done, f"{type(e).__name__}: {e}") from e
            absent = [k for k in p.ensures if k not in store]
            if absent:
                raise PassError(p.name, done, f"did not produce {absent} as it promises")
            ctx.results.append(PassResult(p.name, time.perf_counter() - t0, report))
            done.append(p.name)
        return ctx
