"""``fluxlab.backends()`` and ``fluxlab doctor``: every backend, whether it runs here, and why not."""

from __future__ import annotations

import dataclasses

from . import registry
from .dispatch import default_backend
from .platform import Platform, current_platform


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


def backends(platform: Platform | None = None) -> list[BackendStatus]:
    """Every registered backend as a record, judged for ``platform`` (default: this machine)."""
    platform = platform or current_platform()
    pick = default_backend(platform=platform)
    rows = []
    for backend in registry.all_backends():
        reasons = backend.platform_reasons(platform)
        caps = backend.caps
        rows.append(BackendStatus(backend.name, not reasons, tuple(reasons), backend.version,
                                  backend.name == pick, backend.description, caps.returns_lse, caps.quantised,
                                  caps.experimental, backend.builtin))
    return rows


def doctor_text(platform: Platform | None = None) -> str:
    platform = platform or current_platform()
    rows = backends(platform)
    width = max(len(r.name) for r in rows) + 2
    lines = [f"platform: {platform.describe()}",
             f"features: cuDNN attention={'yes' if platform.cudnn_attention else 'no'}, "
             f"bf16={'yes' if platform.bf16 else 'no'}, fp8={'yes' if platform.fp8 else 'no'}",
             "",
             f"{'backend':<{width}}{'status':<12}{'version':<14}notes"]
    for r in rows:
        status = "DEFAULT" if r.default else ("available" if r.available else "no")
        tags = [t for t, on in (("quantised", r.quantised), ("experimental", r.experimental),
                                ("lse", r.returns_lse), ("user", not r.builtin)) if on]
        note = "; ".join(r.reasons) if r.reasons else r.description
        if tags:
            note = f"[{', '.join(tags)}] {note}"
        lines.append(f"{r.name:<{width}}{status:<12}{(r.version or '-'):<14}{note}")
    return "\n".join(lines)
