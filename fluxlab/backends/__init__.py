"""One adapter per attention library, all behind the [batch, seq, heads, head_dim] contract (base.py).

Each adapter module declares ``BACKENDS`` (a list of ``Backend``) and, optionally, ``GROUPS`` (a list of
``Group``); every module in this folder is collected here, so adding a built-in backend is one new file
(docs/backends.md, "Adding a backend"). Modules whose name starts with ``_`` and ``base`` are helpers.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Backend, Capabilities, Group, Requirement


def _collect():
    backends, groups = [], []
    for name in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if name.startswith("_") or name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        backends.extend(getattr(module, "BACKENDS", ()))
        groups.extend(getattr(module, "GROUPS", ()))
    backends.sort(key=lambda b: (b.caps.emulated, b.name))  # listings: by name, emulations last
    return backends, groups


BUILTIN_BACKENDS, BUILTIN_GROUPS = _collect()

__all__ = ["BUILTIN_BACKENDS", "BUILTIN_GROUPS", "Backend", "Capabilities", "Group", "Requirement"]
