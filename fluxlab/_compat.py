"""Names that moved or were renamed stay reachable for one release, with a ``DeprecationWarning`` naming the new
place: ``__getattr__ = moved(__name__, {"OldName": "package.module:NewName"})``."""

from __future__ import annotations

import importlib
import warnings


def moved(module: str, names: dict[str, str], stacklevel: int = 2):
    """A module ``__getattr__`` serving each old name from its new place, with a warning that says where
    (``stacklevel``: 3 where another ``__getattr__`` calls it)."""

    def __getattr__(name):
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, _, new = target.partition(":")
        warnings.warn(f"{module}.{name} is deprecated and goes away in the next release; use {where}.{new}",
                      DeprecationWarning, stacklevel=stacklevel)
        return getattr(importlib.import_module(where), new)

    return __getattr__
