"""The table of backends: the built-in adapters, the priority groups (``fa``), and any a researcher registers."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterable

import torch

from .backends import BUILTIN_BACKENDS
from .backends.base import FLOAT_DTYPES, HALF_DTYPES, Backend, Capabilities, Requirement
from .errors import BackendRegistrationError, UnknownBackendError
from .platform import Platform
from .priority import GROUPS, group_members

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
    "flash": "fa2",  # diffusers' `flash` is FlashAttention-2 (models/interop.py maps every diffusers name)
    "flash_varlen": "fa2",
    "flex_attention": "flex",
    "_flash_3": "fa3",
    "_flash_varlen_3": "fa3",
    "sage_varlen": "sage",
    "_sage_qk_int8_pv_fp16_triton": "sage",
    "float64": "reference",
}

@dataclasses.dataclass(frozen=True)
class BackendGroup:
    """A priority group, e.g. ``fa``: stands for the best member that can run the inputs (priority.GROUPS).
    It has no kernel of its own; a plan resolves it to a member, and records that member."""

    name: str
    description: str
    caps: Capabilities  # what its members offer, for listings
    options: dict = dataclasses.field(default_factory=dict)
    option_values: dict = dataclasses.field(default_factory=dict)
    requires: tuple = ()
    builtin: bool = True
    version = None

    def members(self, platform: Platform) -> list[Backend]:
        return [_registry[name] for name in group_members(self.name, platform)]

    def resolve(self, q, k, platform: Platform, *, causal=False, return_lse=False, lse_grad=False) -> Backend | None:
        """The first member with no reason not to run these inputs; None if none can."""
        for member in self.members(platform):
            if not member.not_supported_reasons(q, k, k, platform, causal=causal, return_lse=return_lse,
                                                lse_grad=lse_grad):
                return member
        return None

    def not_supported_reasons(self, q, k, v, platform, *, causal=False, return_lse=False, lse_grad=False):
        per_member = [(m.name, m.not_supported_reasons(q, k, v, platform, causal=causal, return_lse=return_lse,
                                                       lse_grad=lse_grad)) for m in self.members(platform)]
        if any(not reasons for _, reasons in per_member):
            return []
        return [f"no member of the '{self.name}' group can run here (" +
                " | ".join(f"{name}: {'; '.join(r)}" for name, r in per_member) + ")"]

    def platform_reasons(self, platform: Platform) -> list[str]:
        per_member = [(m.name, m.platform_reasons(platform)) for m in self.members(platform)]
        if any(not reasons for _, reasons in per_member):
            return []
        return [f"no member of the '{self.name}' group is usable here (" +
                " | ".join(f"{name}: {'; '.join(r)}" for name, r in per_member) + ")"]


_GROUP_DESCRIPTIONS = {"fa": "the best FlashAttention generation that runs the inputs (fa4 > fa3 > fa2 on Hopper)"}
_groups: dict[str, BackendGroup] = {
    name: BackendGroup(name, _GROUP_DESCRIPTIONS[name],
                       Capabilities(vendors=frozenset({"nvidia", "amd"}), dtypes=HALF_DTYPES, max_head_dim=256,
                                    returns_lse=True))
    for name in GROUPS}
_registry: dict[str, Backend] = {b.name: b for b in BUILTIN_BACKENDS}
_generation = 0  # bumped on every change, so cached decisions are dropped


def _changed():
    global _generation
    _generation += 1


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _registry and key not in _groups:
        from .models.interop import refusal  # diffusers' hub kernels and kernels fluxlab has no equivalent of

        if refusal(key):
            raise UnknownBackendError(refusal(key))
        known = sorted(_registry) + sorted(_groups) + sorted(ALIASES)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownBackendError(f"unknown attention backend '{name}'.{hint} Known backends: "
                                  f"{', '.join(sorted(_registry))}; groups: {', '.join(sorted(_groups))} "
                                  f"(aliases: {', '.join(sorted(ALIASES))}).")
    return key


def get_backend(name: str) -> Backend | BackendGroup:
    """A backend, or a priority group (``fa``) that a plan resolves to one of its members."""
    key = canonical_name(name)
    return _registry.get(key) or _groups[key]


def all_backends() -> list[Backend]:
    """Every concrete backend (groups are listed by ``all_groups``)."""
    return list(_registry.values())


def all_groups() -> list[BackendGroup]:
    return list(_groups.values())


_CAPABILITY_FIELDS = {f.name for f in dataclasses.fields(Capabilities)}


def register_backend(name: str, fn: Callable, *, description: str = "", requires: Iterable[Requirement] = (),
                     options: dict | None = None, option_values: dict | None = None, replace: bool = False,
                     **capabilities) -> Backend:
    """Add a kernel that then behaves like a built-in one: dispatch, doctor, comparisons, models.

    ``fn(q, k, v, *, scale, causal, return_lse, **options)`` takes and returns ``[B, S, H, D]``; with
    ``return_lse`` it returns ``(out, lse)``, lse natural-log float32 ``[B, H, S]``. Capabilities are the
    fields of :class:`fluxlab.backends.base.Capabilities` (``vendors``, ``dtypes``, ``head_dims``,
    ``gqa``, ``causal``, ``returns_lse``, ``quantised``, ...); unspecified ones default to permissive
    values except ``returns_lse`` (False). ``options``: tunables and defaults; ``option_values``: for an
    option, ``{valid value: meaning}`` (other values are refused when a spec is parsed).
    """
    _check_definition(name, fn, options, capabilities)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise ValueError(f"backend name {name!r} must be lower-case letters, digits and '_' "
                         "(e.g. 'my_kernel')")
    if not callable(fn):
        raise TypeError(f"register_backend({name!r}, fn): fn must be callable, got {type(fn).__name__}")
    unknown = set(capabilities) - _CAPABILITY_FIELDS
    if unknown:
        raise TypeError(f"unknown capability {sorted(unknown)} for backend {name!r}; "
                        f"valid: {sorted(_CAPABILITY_FIELDS)}")
    if name in _groups:
        raise ValueError(f"{name!r} is a priority group (fluxlab/priority.py GROUPS); pick another name")
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
                      requires=tuple(requires), options=dict(options or {}), builtin=False,
                      option_values=dict(option_values or {}))
    _registry[name] = backend
    _changed()
    return backend


_CONTRACT_KEYWORDS = ("scale", "causal", "return_lse")  # dispatch passes these to every kernel, by keyword


def _check_definition(name, fn, options, capabilities) -> None:
    """Refuse, at registration, what would only fail at the first call or be silently unreachable: a built-in
    or alias name, a function that does not take the contract's keywords, dtypes given by name are resolved."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key in ALIASES:
        raise BackendRegistrationError(f"{name!r} is an alias of the built-in '{ALIASES[key]}' (a backend of that "
                                       "name would never be reached); pick another name")
    if key in _registry and _registry[key].builtin:
        raise BackendRegistrationError(f"'{key}' is a built-in backend and cannot be replaced (comparisons and "
                                       "models rely on it); register yours under another name, e.g. 'my_{key}'")
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function without a signature: its first call will tell
        parameters = None
    if parameters is not None:
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            takes = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
            missing = [k for k in (*_CONTRACT_KEYWORDS, *(options or {})) if k not in takes]
            if missing:
                raise BackendRegistrationError(
                    f"register_backend({name!r}, fn): fn must take the keyword argument(s) {', '.join(missing)}; "
                    "fluxlab calls fn(q, k, v, *, scale, causal, return_lse, **options). Define it as "
                    "def fn(q, k, v, *, scale, causal=False, return_lse=False, **options)")
    if "dtypes" in capabilities:
        value = capabilities["dtypes"]
        values = [value] if isinstance(value, (str, torch.dtype)) else list(value)
        capabilities["dtypes"] = frozenset(_dtype_of(name, v) for v in values)


def _dtype_of(name, value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).lower().replace("torch.", ""), None)
    if isinstance(found, torch.dtype) and found.is_floating_point:
        return found
    raise BackendRegistrationError(f"register_backend({name!r}): dtypes has {value!r}, not a floating torch "
                                   "dtype; pass e.g. dtypes={torch.bfloat16, torch.float16} or "
                                   "dtypes={'bfloat16', 'float16'}")


def unregister_backend(name: str) -> None:
    """Remove a user-registered backend (built-ins cannot be removed)."""
    key = canonical_name(name)
    if _registry[key].builtin:
        raise ValueError(f"'{key}' is built in and cannot be unregistered")
    del _registry[key]
    _changed()
