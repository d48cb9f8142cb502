"""Which exact backend runs when nobody chose: per platform, the backends in the order of their declared ranks.

Each backend declares its rank per platform row in its adapter (``Backend.priority``, e.g. ``{"nvidia/sm_90": 10,
"amd": 40}``): a "vendor/arch" entry wins over the "vendor" entry; no entry means it is never picked
automatically there (quantised, emulated and debugging kernels: a researcher opts into them). ``PRIORITY`` and
``GROUPS`` are the built-in tables derived from those declarations, for reading; ``priority_for`` also counts
registered and plug-in backends that declare a rank.
"""

from __future__ import annotations

from . import registry
from .backends import BUILTIN_BACKENDS, BUILTIN_GROUPS
from .platform import Platform


def _row(backends, vendor: str, arch: str | None) -> tuple[str, ...]:
    key = f"{vendor}/{arch}"
    ranked = []
    for backend in backends:
        rank = backend.priority.get(key, backend.priority.get(vendor))
        if rank is not None:
            ranked.append((rank, backend.name))
    return tuple(name for _, name in sorted(ranked))


def _table(backends) -> dict[tuple[str, str | None], tuple[str, ...]]:
    rows = set()
    for backend in backends:
        for key in backend.priority:
            vendor, _, arch = key.partition("/")
            rows.add((vendor, arch or None))
            rows.add((vendor, None))
    return {row: _row(backends, *row) for row in sorted(rows, key=lambda r: (r[0], r[1] or "~"))}


# The built-in priority lists: (vendor, arch) -> backends, best first; (vendor, None) for the vendor's other arches.
PRIORITY: dict[tuple[str, str | None], tuple[str, ...]] = _table(BUILTIN_BACKENDS)
# The built-in priority groups -> their members, best first (on a given platform only those that fit it).
GROUPS: dict[str, tuple[str, ...]] = {
    group.name: tuple(b.name for b in sorted((b for b in BUILTIN_BACKENDS if group.name in b.groups),
                                             key=lambda b: b.groups[group.name]))
    for group in BUILTIN_GROUPS}

_cache: dict = {}


def priority_for(platform: Platform) -> tuple[str, ...]:
    """The backends automatic choice tries on ``platform``, best first."""
    key = (platform.vendor, platform.arch, registry.generation())
    order = _cache.get(key)
    if order is None:
        order = _cache[key] = _row(registry.all_backends(), platform.vendor, platform.arch)
    return order


def group_members(group: str, platform: Platform) -> tuple[str, ...]:
    """The backends a priority group tries on ``platform``, best first."""
    return tuple(b.name for b in registry.get_backend(group).members(platform))
