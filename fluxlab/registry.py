"""The table of backends: the built-in adapters plus any a researcher registers."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable

import torch

from .backends import BUILTIN_BACKENDS
from .backends.base import FLOAT_DTYPES, Backend, Capabilities, Requirement
from .errors import UnknownBackendError

# The serving framework's and diffusers' names for the same kernels.
ALIASES = {
    "torch_sdpa": "sdpa",
    "native": "sdpa",
    "_native_math": "sdpa_math",
    "_native_flash": "sdpa_flash",
    "_native_efficient": "sdpa_efficient",
    "_native_cudnn": "sdpa_cudnn",
    "sage_attn": "sage",
    "flash_attn": "fa",
    "flash": "fa",
    "flex_attention": "flex",
    "_flash_3": "fa3",
    "float64": "reference",
}

_registry: dict[str, Backend] = {b.name: b for b in BUILTIN_BACKENDS}
_generation = 0  # bumped on every change, so cached decisions are dropped


def generation() -> int:
    return _generation


def _changed():
    global _generation
    _generation += 1


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _registry:
        known = sorted(_registry) + sorted(ALIASES)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownBackendError(f"unknown attention backend '{name}'.{hint} Known backends: "
                                  f"{', '.join(sorted(_registry))} (aliases: {', '.join(sorted(ALIASES))}).")
    return key


def get_backend(name: str) -> Backend:
    return _registry[canonical_name(name)]


def all_backends() -> list[Backend]:
    return list(_registry.values())


_CAPABILITY_FIELDS = {f.name for f in dataclasses.fields(Capabilities)}


def register_backend(name: str, fn: Callable, *, description: str = "", requires: Iterable[Requirement] = (),
                     options: dict | None = None, replace: bool = False, **capabilities) -> Backend:
    """Add a kernel that then behaves like a built-in one: dispatch, doctor, comparisons, models.

    ``fn(q, k, v, *, scale, causal, return_lse, **options)`` takes and returns ``[B, S, H, D]``; with
    ``return_lse`` it returns ``(out, lse)``, lse natural-log float32 ``[B, H, S]``. Capabilities are the
    fields of :class:`fluxlab.backends.base.Capabilities` (``vendors``, ``dtypes``, ``head_dims``,
    ``gqa``, ``causal``, ``returns_lse``, ``quantised``, ...); unspecified ones default to permissive
    values except ``returns_lse`` (False).
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise ValueError(f"backend name {name!r} must be lower-case letters, digits and '_' "
                         "(e.g. 'my_kernel')")
    if not callable(fn):
        raise TypeError(f"register_backend({name!r}, fn): fn must be callable, got {type(fn).__name__}")
    unknown = set(capabilities) - _CAPABILITY_FIELDS
    if unknown:
        raise TypeError(f"unknown capability {sorted(unknown)} for backend {name!r}; "
                        f"valid: {sorted(_CAPABILITY_FIELDS)}")
    if (name in _registry or name in ALIASES) and not replace:
        raise ValueError(f"a backend named {name!r} already exists; pass replace=True to replace it, "
                         "or pick another name")
    for key in ("vendors", "dtypes"):
        if key in capabilities:
            value = capabilities[key]
            capabilities[key] = frozenset([value] if isinstance(value, (str, torch.dtype)) else value)
    capabilities.setdefault("vendors", frozenset({"nvidia", "amd", "cpu", "other"}))
    capabilities.setdefault("dtypes", FLOAT_DTYPES)
    backend = Backend(name, fn, Capabilities(**capabilities), description or f"user backend {name}",
                      requires=tuple(requires), options=dict(options or {}), builtin=False)
    _registry[name] = backend
    _changed()
    return backend


def unregister_backend(name: str) -> None:
    """Remove a user-registered backend (built-ins cannot be removed)."""
    key = canonical_name(name)
    if _registry[key].builtin:
        raise ValueError(f"'{key}' is built in and cannot be unregistered")
    del _registry[key]
    _changed()
