"""``fluxlab.backends()`` and ``fluxlab doctor``: every backend, whether it runs here, and why not."""

from __future__ import annotations

import dataclasses

from . import registry
from .dispatch import Reasons, flux_reasons
from .platform import Platform, current_platform
from .results import ResultList


def _why_not_default(backend, pick: str | None, reasons: Reasons) -> str:
    if reasons(backend):
        return f"cannot run FLUX-shaped inputs here: {'; '.join(reasons(backend))}"
    return reasons.why_not(backend, pick)[0]


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool  # runs on this machine (platform + installed packages); inputs may still rule it out
    reasons: tuple[str, ...]
    version: str | None
    default: bool  # the automatic pick for FLUX-shaped inputs on this machine
    description: str
    returns_lse: bool
    quantised: bool
    experimental: bool
    builtin: bool
    not_default_because: str | None = None  # for available backends that automatic choice does not pick
    # Proven against a stand-in with the library's signature only (call contract tested, kernel never run here).
    stand_in_only: bool = False
    group_members: tuple[str, ...] = ()  # for a priority group (``fa``): its members on this platform, best first
    emulated: bool = False  # a float32 emulation of another kernel's numerics (backends/emulated.py)
    emulates: str | None = None  # the real backend it models
    plugin: str | None = None  # the distribution that declared it through the ``fluxlab.backends`` entry point


def _status(row: BackendStatus) -> str:
    return "DEFAULT" if row.default else "available" if row.available else "no"


class BackendList(ResultList):
    """``fluxlab.backends()``: a list of ``BackendStatus`` with the result protocol (``fluxlab.results``)."""

    def __repr__(self) -> str:
        lines = [f"{r.name}: {_status(r)}" for r in self]
        return f"BackendList({self.headline()}:\n  " + "\n  ".join(lines) + ")"


def backends(platform: Platform | None = None) -> BackendList:
    """Every registered backend as a record, judged for ``platform`` (default: this machine)."""
    platform = platform or current_platform()
    reasons = flux_reasons(platform)  # each backend's reasons for FLUX-shaped inputs, computed once
    picked = reasons.automatic()
    pick = picked.name if picked else None
    rows = []
    for backend in registry.all_backends():
        why, caps = backend.platform_reasons(platform), backend.caps
        not_default = None if why or backend.name == pick else _why_not_default(backend, pick, reasons)
        rows.append(BackendStatus(backend.name, not why, tuple(why), backend.version, backend.name == pick,
                                  backend.description, caps.returns_lse, caps.quantised, caps.experimental,
                                  backend.builtin, not_default, caps.stand_in_only, emulated=caps.emulated,
                                  emulates=caps.emulates, plugin=backend.plugin))
    for group in registry.all_groups():
        reasons = group.platform_reasons(platform)
        members = tuple(m.name for m in group.members(platform))
        rows.append(BackendStatus(group.name, not reasons, tuple(reasons), None, False,
                                  f"group: {group.description}; here tries {' > '.join(members)}", True, False, False,
                                  True, None if reasons else "a group: names its best runnable member, never picked "
                                  "automatically itself", group_members=members))
    default = next((r.name for r in rows if r.default), None)
    return BackendList(rows, f"{len(rows)} backends on {platform.describe()}; automatic pick: {default or 'none'}")


def doctor_text(platform: Platform | None = None) -> str:
    platform = platform or current_platform()
    rows = backends(platform)
    width = max(len(r.name) for r in rows) + 2
    yes = {True: "yes", False: "no"}
    lines = [f"platform: {platform.describe()}",
             f"features: cuDNN attention={yes[platform.cudnn_attention]}, bf16={yes[platform.bf16]}, "
             f"fp8={yes[platform.fp8]}", "", f"{'backend':<{width}}{'status':<12}{'version':<14}notes"]
    for r in rows:
        tags = [t for t, on in (("quantised", r.quantised), ("experimental", r.experimental),
                                ("lse", r.returns_lse), ("user", not r.builtin and not r.plugin),
                                (f"plug-in {r.plugin}", r.plugin is not None),
                                ("proven on a stand-in only", r.stand_in_only),
                                (f"emulated: emulates {r.emulates}", r.emulated)) if on]
        note = "; ".join(r.reasons) if r.reasons else r.description
        if r.not_default_because:
            note += f" — not default: {r.not_default_because}"
        if tags:
            note = f"[{', '.join(tags)}] {note}"
        lines.append(f"{r.name:<{width}}{_status(r):<12}{(r.version or '-'):<14}{note}")
    problems = registry.plugin_problems()
    if problems:
        lines += ["", f"plug-ins that failed to load (entry point group {registry.PLUGIN_GROUP}):"]
        lines += [f"  {p.entry_point} ({p.distribution or 'unknown distribution'}): {p.error}" for p in problems]
    return "\n".join(lines)


def report(platform: Platform | None = None) -> dict:
    """What ``fluxlab doctor --json`` prints: the platform, every backend, and the plug-ins that failed to load."""
    platform = platform or current_platform()
    return {"platform": platform.as_dict(),
            "backends": [dataclasses.asdict(status) for status in backends(platform)],
            "plugin_problems": [dataclasses.asdict(p) for p in registry.plugin_problems()]}
