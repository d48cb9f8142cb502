"""Backends as comparison axes: a name with options and torch knobs, e.g. ``"aiter:how_v3_bf16_cvt=0"``.
Backend options go to the kernel through ``BackendChoice``; ``KNOBS`` are torch settings held around the call.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from .. import registry
from ..dispatch import BackendChoice
from ..platform import Platform


def _cudnn_sdp(on):
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(bool(on))
    return lambda: torch.backends.cuda.enable_cudnn_sdp(before)


def _lowp_reduction(on):
    before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(bool(on))
    return lambda: torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(before)


@dataclasses.dataclass(frozen=True)
class Knob:
    description: str
    apply: object  # value -> undo callable


KNOBS = {
    "cudnn": Knob("let torch's SDPA pick its cuDNN kernel (1) or not (0); matters for 'sdpa' on NVIDIA only",
                  _cudnn_sdp),
    "lowp_reduction": Knob("SDPA math reduces in fp16/bf16 instead of float32 "
                           "(torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp)", _lowp_reduction),
}


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """One column of a comparison: a backend, its options, and torch knobs around the call."""

    choice: BackendChoice
    knobs: tuple[tuple[str, object], ...] = ()

    @classmethod
    def parse(cls, spec) -> BackendSpec:
        if isinstance(spec, BackendSpec):
            return spec
        if isinstance(spec, BackendChoice):
            return cls(spec)
        name, _, rest = str(spec).partition(":")
        backend = registry.get_backend(name)
        options, knobs = [], {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, _, value = item.partition("=")
            if key.strip() in KNOBS and key.strip() not in backend.options:
                knobs[key.strip()] = _flag(value.strip(), item, spec)
            else:
                options.append(item)
        choice = BackendChoice.parse(backend.name + (":" + ",".join(options) if options else ""))
        return cls(choice, tuple(sorted(knobs.items())))

    @property
    def name(self) -> str:
        return self.choice.name

    @property
    def options(self) -> dict:
        return dict(self.choice.options)

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={int(v)}" for k, v in self.knobs)
        base = str(self.choice)
        return base + ("," if ":" in base else ":") + extra if extra else base

    def __str__(self):
        return self.label

    @contextlib.contextmanager
    def context(self):
        undo = []
        try:
            for key, value in self.knobs:
                undo.append(KNOBS[key].apply(value))
            yield
        finally:
            for restore in reversed(undo):
                restore()


def _flag(value: str, item: str, spec) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"knob {item!r} in {spec!r} takes 0 or 1, e.g. 'sdpa:cudnn=0'")


def parse_backends(backends, platform: Platform) -> list[BackendSpec]:
    """None: every backend that runs on ``platform`` except the float64 reference; a comma-separated string
    or a list of names/specs otherwise (duplicates dropped, order kept)."""
    if backends is None:
        names = [b.name for b in registry.all_backends()
                 if b.name != "reference" and not b.platform_reasons(platform)]
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
