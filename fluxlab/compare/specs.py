"""Backends as comparison axes: a spec such as ``"aiter:how_v3_bf16_cvt=0"`` or ``"sdpa:cudnn=0"``.
The grammar, option validation and torch knobs are ``fluxlab.choice`` (the same parser ``attention`` uses).
"""

from __future__ import annotations

import dataclasses

from .. import registry
from ..choice import KNOBS, BackendChoice  # noqa: F401  (KNOBS re-exported for compare.cli)
from ..platform import Platform


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """One column of a comparison: a parsed ``BackendChoice`` (name, kernel options, torch knobs)."""

    choice: BackendChoice

    @classmethod
    def parse(cls, spec) -> BackendSpec:
        if isinstance(spec, BackendSpec):
            return spec
        return cls(BackendChoice.parse(spec))

    @property
    def name(self) -> str:
        return self.choice.name

    @property
    def options(self) -> dict:
        return dict(self.choice.options)

    @property
    def knobs(self) -> tuple:
        return self.choice.knobs

    @property
    def label(self) -> str:
        return str(self.choice)

    def __str__(self):
        return self.label

    def context(self):
        """Hold the spec's torch knobs around a call (plans made from ``choice`` hold them themselves)."""
        return self.choice.knob_context()


def parse_backends(backends, platform: Platform) -> list[BackendSpec]:
    """None: every backend that runs on ``platform`` except the float64 reference (emulated kernels only on a
    CPU, where they stand in for the GPU kernels; experimental emulators only when named); a comma-separated string
    or a list of names/specs otherwise (duplicates dropped, order kept)."""
    if backends is None:
        names = [b.name for b in registry.all_backends()
                 if b.name != "reference" and not b.platform_reasons(platform)
                 and (platform.vendor == "cpu" or not b.caps.emulated)
                 and not (b.caps.emulated and b.caps.experimental)]
        return [BackendSpec.parse(n) for n in names]
    if isinstance(backends, (str, BackendChoice, BackendSpec)):
        backends = [backends] if not isinstance(backends, str) else _split_specs(backends)
    specs, seen = [], set()
    for item in backends:
        spec = BackendSpec.parse(item)
        if spec.label not in seen:
            seen.add(spec.label)
            specs.append(spec)
    return specs


def _split_specs(text: str) -> list[str]:
    """"sdpa,flex,aiter:how_v3_bf16_cvt=0,x=1" -> a new spec starts at each item without '='."""
    specs: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and specs and ":" not in part:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs
