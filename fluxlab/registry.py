"""The table of backends: the built-in adapters, the priority groups (``fa``), any a researcher registers, and
third-party plug-ins (entry point group ``fluxlab.backends``, loaded on the table's first use); the priority lists
and the diffusers names derived from their declarations (docs/backends.md)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import re
import types
from collections.abc import Callable, Iterable

import torch

from .backends import BUILTIN_BACKENDS, BUILTIN_GROUPS
from .backends.base import FLOAT_DTYPES, Backend, Capabilities, Requirement
from .errors import BackendRegistrationError, FluxlabError, UnknownBackendError
from .platform import VENDORS, Platform
from .util import parse_dtype


# diffusers' attention-backend names that fluxlab does not run, each with the fluxlab backend to use instead (the
# names of the kernels fluxlab does run are declared by their adapters, ``Backend.diffusers``).
# Kernels diffusers downloads from the Hugging Face Hub at run time -> (fluxlab backend to use, what it is).
HUB_KERNELS: dict[str, tuple[str, str]] = {
    "flash_hub": ("fa2", "FlashAttention-2"),
    "flash_varlen_hub": ("fa2", "FlashAttention-2 (varlen)"),
    "_flash_3_hub": ("fa3", "FlashAttention-3"),
    "_flash_3_varlen_hub": ("fa3", "FlashAttention-3 (varlen)"),
    "flash_4_hub": ("fa4", "FlashAttention-4"),
    "aiter_fa2_hub": ("aiter", "AMD AITER's CK FlashAttention-2"),
    "sage_hub": ("sage", "SageAttention"),
    "sage_blackwell_hub": ("sage", "SageAttention 3 for Blackwell"),
}
# diffusers backends with no fluxlab backend of the same family -> (nearest fluxlab backend or None, what it is).
NO_EQUIVALENT: dict[str, tuple[str | None, str]] = {
    "_native_npu": (None, "Ascend NPU attention (torch_npu)"),
    "_native_xla": (None, "XLA / TPU flash attention"),
    "xformers": ("sdpa_efficient", "xFormers' memory-efficient kernel"),
    "_sage_qk_int8_pv_fp8_cuda": ("sage", "SageAttention 2's CUDA kernel (int8 QK^T, fp8 PV)"),
    "_sage_qk_int8_pv_fp16_cuda": ("sage", "SageAttention 2's CUDA kernel (int8 QK^T, fp16 PV)"),
}


def refusal(name: str) -> str | None:
    """Why a diffusers backend name has no fluxlab backend here, naming the one to use; None if it maps."""
    key = name.strip().lower()
    if key in HUB_KERNELS:
        use, what = HUB_KERNELS[key]
        return (f"'{key}' is diffusers' Hugging Face Hub build of {what}, downloaded when it is first used; "
                f"fluxlab runs installed kernels only. Use fluxlab's '{use}' (fluxlab doctor says how to install it).")
    if key in NO_EQUIVALENT:
        nearest, what = NO_EQUIVALENT[key]
        use = f" The nearest fluxlab backend is '{nearest}'." if nearest else ""
        return f"diffusers' '{key}' is {what}; fluxlab has no backend of that kernel family.{use}"
    return None


def _aliases(declared) -> dict[str, str]:
    """Other names -> backend: the declared aliases and diffusers' names of the same kernel."""
    return {alias: b.name for b in declared for alias in (*b.aliases, *getattr(b, "diffusers", ()))
            if alias != b.name}


# Other names for the built-in backends (the serving framework's and diffusers'), from their declarations.
ALIASES = _aliases([*BUILTIN_BACKENDS, *BUILTIN_GROUPS])


@dataclasses.dataclass(frozen=True)
class BackendGroup:
    """A priority group, e.g. ``fa``: stands for the best member that can run the inputs (members declare
    ``groups={"fa": rank}``). It has no kernel of its own; a plan resolves it to a member, and records that member."""

    name: str
    description: str
    caps: Capabilities  # what its members offer, for listings
    options: dict = dataclasses.field(default_factory=dict)
    option_values: dict = dataclasses.field(default_factory=dict)
    requires: tuple = ()
    builtin: bool = True
    aliases: tuple = ()
    version = None

    def all_members(self) -> list[Backend]:
        """Every member, best first."""
        return sorted((b for b in _registry.values() if self.name in b.groups), key=lambda b: b.groups[self.name])

    def members(self, platform: Platform) -> list[Backend]:
        """The members whose vendor and arch fit ``platform``, best first (all of them where none fits)."""
        members = self.all_members()
        return [b for b in members if b.runs_on(platform)] or members

    def resolve(self, q, k, platform: Platform, **call) -> Backend | None:
        """The first member with no reason not to run these inputs; None if none can."""
        return next((m for m in self.members(platform) if not m.not_supported_reasons(q, k, k, platform, **call)),
                    None)

    def not_supported_reasons(self, q, k, v, platform, **call) -> list[str]:
        return self._no_member(platform, "can run here", lambda m: m.not_supported_reasons(q, k, v, platform, **call))

    def platform_reasons(self, platform: Platform) -> list[str]:
        return self._no_member(platform, "is usable here", lambda m: m.platform_reasons(platform))

    def _no_member(self, platform: Platform, what: str, reasons_of) -> list[str]:
        """No reasons if a member has none; else one reason quoting every member's."""
        per_member = [(m.name, reasons_of(m)) for m in self.members(platform)]
        if not all(reasons for _, reasons in per_member):
            return []
        return [f"no member of the '{self.name}' group {what} (" +
                " | ".join(f"{name}: {'; '.join(r)}" for name, r in per_member) + ")"]


_groups: dict[str, BackendGroup] = {g.name: BackendGroup(g.name, g.description, g.caps, aliases=g.aliases)
                                   for g in BUILTIN_GROUPS}
_registry: dict[str, Backend] = {b.name: b for b in BUILTIN_BACKENDS}
_generation = 0  # bumped on every change, so cached decisions are dropped


def _changed():
    global _generation
    _generation += 1


PLUGIN_GROUP = "fluxlab.backends"


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A plug-in that could not be loaded; ``fluxlab doctor`` lists it with its error."""

    entry_point: str  # "name = module:attribute"
    distribution: str | None
    error: str


_plugins: dict = {"loaded": False, "problems": [], "loading": None}


def load_plugins() -> None:
    """Register the backends of every installed ``fluxlab.backends`` entry point, once per process (a failure is kept
    in ``plugin_problems()``, never raised; what an entry point may hold: docs/backends.md, "Plug-ins")."""
    if _plugins["loaded"]:
        return
    _plugins["loaded"] = True
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        dist = getattr(getattr(entry, "dist", None), "name", None)
        _plugins["loading"] = dist or entry.value  # what register_backend calls made while importing it record
        try:
            loaded = entry.load()
            declared = [loaded] if isinstance(loaded, Backend) else loaded
            if isinstance(loaded, types.ModuleType):
                declared = []  # it registered its backends while being imported
            elif not (isinstance(declared, (list, tuple)) and all(isinstance(b, Backend) for b in declared)):
                raise TypeError(f"the entry point's object is a {type(loaded).__name__}; it must be a fluxlab.Backend, "
                                "a list of them, or a module that calls fluxlab.register_backend when imported")
            for backend in declared:
                _add(dataclasses.replace(backend, builtin=False, plugin=dist or entry.value), replace=False)
        except Exception as exc:  # a broken plug-in must not break fluxlab: doctor reports it
            _plugins["problems"].append(PluginProblem(f"{entry.name} = {entry.value}", dist,
                                                      f"{type(exc).__name__}: {exc}"))
        finally:
            _plugins["loading"] = None


def plugin_problems() -> list[PluginProblem]:
    """The plug-ins that failed to load, with their errors."""
    load_plugins()
    return list(_plugins["problems"])


def canonical_name(name: str) -> str:
    load_plugins()
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _registry and key not in _groups:
        if refusal(key):  # diffusers' hub kernels and kernels fluxlab has no equivalent of
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
    load_plugins()
    return list(_registry.values())


def all_groups() -> list[BackendGroup]:
    load_plugins()
    return list(_groups.values())


def generation() -> int:
    """Bumped on every change of the table (plug-ins loaded first), so cached decisions can be dropped."""
    load_plugins()
    return _generation


_CAPABILITY_FIELDS = {f.name for f in dataclasses.fields(Capabilities)}


def register_backend(name: str | Backend, fn: Callable | None = None, *, description: str = "",
                     requires: Iterable[Requirement] = (), options: dict | None = None,
                     option_values: dict | None = None, replace: bool = False, aliases: Iterable[str] = (),
                     priority: dict[str, int] | None = None, **capabilities) -> Backend:
    """Add a kernel that then behaves like a built-in one: dispatch, doctor, comparisons, models.

    ``fn(q, k, v, *, scale, causal, return_lse, **options)`` takes and returns ``[B, S, H, D]`` (with ``return_lse``:
    ``(out, lse)``, lse natural-log float32 ``[B, H, S]``). ``capabilities`` are fields of ``Capabilities``
    (permissive defaults, except ``returns_lse=False``); the other arguments are the ``Backend`` fields of the same
    names (docs/backends.md). A ready ``fluxlab.Backend`` may be passed instead of ``name, fn``.
    """
    load_plugins()  # a plug-in's names are taken before the user's
    if isinstance(name, Backend):
        return _add(dataclasses.replace(name, builtin=False, plugin=name.plugin or _plugins["loading"]), replace)
    _check_definition(name, fn, options, capabilities)
    unknown = set(capabilities) - _CAPABILITY_FIELDS
    if unknown:
        raise BackendRegistrationError(f"unknown capability {sorted(unknown)} for backend {name!r}; "
                                       f"valid: {sorted(_CAPABILITY_FIELDS)}")
    vendors = capabilities.get("vendors", VENDORS)
    capabilities["vendors"] = frozenset([vendors] if isinstance(vendors, str) else vendors)
    capabilities.setdefault("dtypes", FLOAT_DTYPES)
    backend = Backend(name, fn, Capabilities(**capabilities), description or f"user backend {name}",
                      requires=tuple(requires), options=dict(options or {}), builtin=False,
                      option_values=dict(option_values or {}), aliases=tuple(aliases),
                      priority=dict(priority or {}), plugin=_plugins["loading"])
    return _add(backend, replace)


def register_padded(inner: str, width: int, *, name: str | None = None) -> str:
    """Register (again) and name ``<inner>_pad<width>``: ``inner`` on q/k/v zero-padded to head_dim ``width`` (for a
    model whose head_dim is below what the kernel takes), with ``inner``'s capabilities. Zero columns change neither
    Q·Kᵀ nor a quantised kernel's per-block scales; the padded output columns are dropped."""
    backend = get_backend(inner)
    caps = backend.caps
    name = name or f"{inner}_pad{width}"

    def padded(q, k, v, *, scale, causal=False, return_lse=False, **options):
        d = q.shape[-1]
        if d > width:
            raise ValueError(f"{name} pads head_dim up to {width}; these inputs have {d}")
        if k.shape[2] != q.shape[2] and not caps.gqa:
            k, v = (t.repeat_interleave(q.shape[2] // k.shape[2], dim=2) for t in (k, v))
        grow = (0, width - d)
        pad = torch.nn.functional.pad
        out = backend.fn(pad(q, grow), pad(k, grow), pad(v, grow), scale=scale, causal=causal, **options)
        return out[..., :d].contiguous()

    kept = {f.name: getattr(caps, f.name) for f in dataclasses.fields(caps)
            if f.name not in ("head_dims", "min_head_dim", "max_head_dim", "returns_lse", "lse_grad", "gqa")}
    register_backend(name, padded, replace=True, requires=backend.requires, options=dict(backend.options),
                     option_values=dict(backend.option_values), max_head_dim=width, gqa=True, **kept,
                     description=f"{inner} on q/k/v zero-padded to head_dim {width}")
    return name


def _add(backend: Backend, replace: bool) -> Backend:
    name = backend.name
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise BackendRegistrationError(f"backend name {name!r} must be lower-case letters, digits and '_' "
                                       "(e.g. 'my_kernel')")
    if not callable(backend.fn):
        raise BackendRegistrationError(f"register_backend({name!r}, fn): fn must be callable, got "
                                       f"{type(backend.fn).__name__}")
    if name in _groups:
        raise BackendRegistrationError(f"{name!r} is a priority group; pick another name")
    if (name in _registry or name in ALIASES) and not replace:
        raise BackendRegistrationError(f"a backend named {name!r} already exists; pass replace=True to replace it, "
                                       "or pick another name")
    taken = [a for a in backend.aliases if a in _registry or a in _groups or ALIASES.get(a, name) != name]
    if taken:
        raise BackendRegistrationError(f"backend {name!r}: alias {taken} already names another backend; pick "
                                       "other aliases")
    _registry[name] = backend
    ALIASES.update(_aliases([backend]))
    _changed()
    return backend


_CONTRACT_KEYWORDS = ("scale", "causal", "return_lse")  # dispatch passes these to every kernel, by keyword


def _check_definition(name, fn, options, capabilities) -> None:
    """Refuse a built-in or alias name and a function without the contract's keywords (which would fail only at the
    first call or be unreachable); resolve dtypes given by name."""
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
    if parameters is not None and not any(p.kind is p.VAR_KEYWORD for p in parameters):
        takes = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        missing = [k for k in (*_CONTRACT_KEYWORDS, *(options or {})) if k not in takes]
        if missing:
            raise BackendRegistrationError(
                f"register_backend({name!r}, fn): fn must take the keyword argument(s) {', '.join(missing)}; "
                "fluxlab calls fn(q, k, v, *, scale, causal, return_lse, **options). Define it as "
                "def fn(q, k, v, *, scale, causal=False, return_lse=False, **options)")
    if "dtypes" in capabilities:  # given by name or as torch dtypes, one or several
        value = capabilities["dtypes"]
        values = [value] if isinstance(value, (str, torch.dtype)) else list(value)
        capabilities["dtypes"] = frozenset(_dtype_of(name, v) for v in values)


def _dtype_of(name, value) -> torch.dtype:
    try:
        found = value if isinstance(value, torch.dtype) else parse_dtype(value)
    except FluxlabError:
        found = None
    if isinstance(found, torch.dtype) and found.is_floating_point:
        return found
    raise BackendRegistrationError(f"register_backend({name!r}): dtypes has {value!r}, not a floating torch "
                                   "dtype; pass e.g. dtypes={torch.bfloat16, torch.float16} or "
                                   "dtypes={'bfloat16', 'float16'}")


def unregister_backend(name: str) -> None:
    """Remove a user-registered backend (built-ins cannot be removed)."""
    key = canonical_name(name)
    if _registry[key].builtin:
        raise BackendRegistrationError(f"'{key}' is built in and cannot be unregistered")
    del _registry[key]
    for alias in [a for a, target in ALIASES.items() if target == key]:
        del ALIASES[alias]
    _changed()


# ----------------------------------------------------------------------------------------------- priorities
# Each backend declares its rank per platform row (``Backend.priority``, e.g. ``{"nvidia/sm_90": 10, "amd": 40}``):
# a "vendor/arch" entry wins over the "vendor" entry; no entry: never picked automatically there.


def _row(backends, vendor: str, arch: str | None) -> tuple[str, ...]:
    ranked = [(b.priority.get(f"{vendor}/{arch}", b.priority.get(vendor)), b.name) for b in backends]
    return tuple(name for rank, name in sorted((r, n) for r, n in ranked if r is not None))


def _table(backends) -> dict[tuple[str, str | None], tuple[str, ...]]:
    rows = set()
    for backend in backends:
        for key in backend.priority:
            vendor, _, arch = key.partition("/")
            rows.update({(vendor, arch or None), (vendor, None)})
    return {row: _row(backends, *row) for row in sorted(rows, key=lambda r: (r[0], r[1] or "~"))}


# The built-in priority lists, for reading: (vendor, arch) -> backends, best first; (vendor, None) for its other arches.
PRIORITY: dict[tuple[str, str | None], tuple[str, ...]] = _table(BUILTIN_BACKENDS)
# The built-in priority groups -> their members, best first (on a given platform only those that fit it).
GROUPS: dict[str, tuple[str, ...]] = {name: tuple(b.name for b in g.all_members()) for name, g in _groups.items()}
_priority_cache: dict = {}


def priority_for(platform: Platform) -> tuple[str, ...]:
    """The backends automatic choice tries on ``platform``, best first (registered and plug-in ones included)."""
    key = (platform.vendor, platform.arch, generation())
    if key not in _priority_cache:
        _priority_cache[key] = _row(all_backends(), platform.vendor, platform.arch)
    return _priority_cache[key]


def group_members(group: str, platform: Platform) -> tuple[str, ...]:
    """The backends a priority group tries on ``platform``, best first."""
    return tuple(b.name for b in get_backend(group).members(platform))
