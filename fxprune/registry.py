"""Plugins of one kind (criteria, reconstructors...) registered by name, one file each.

``REG = Registry("criterion")``; a plugin class with a ``name`` is added by ``@REG.register``;
``REG.create(name)`` returns an instance or raises ``RecipeError`` naming the kind and what is known;
``import_all(package_name, package_path)`` imports every module of a plugin package (that is what
registers them: a new file is picked up without being listed anywhere).
"""
from __future__ import annotations

import importlib
import pkgutil

from .errors import RecipeError


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls):
        self[cls.name] = cls
        return cls

    def create(self, name: str):
        if name not in self:
            raise RecipeError(f"{self.kind}: unknown {name!r}; known: {sorted(self)}")
        return self[name]()


def import_all(package_name: str, package_path) -> None:
    for m in pkgutil.iter_modules(package_path):
        importlib.import_module(f"{package_name}.{m.name}")
