"""One grammar for backend specs, ``"name:option=value,knob=value"``, parsed and validated in one place: kernel
options (``aiter:how_v3_bf16_cvt=0``, checked against the backend's option table) and torch knobs held around the
call (``sdpa:cudnn=0``, ``KNOBS``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from . import registry
from .errors import InvalidBackendSpecError


@dataclasses.dataclass(frozen=True)
class Knob:
    """A torch flag held around the call; refused as a no-op outside ``backends`` (those whose kernel it changes)."""

    description: str
    read: Callable[[], bool]
    write: Callable[[bool], None]
    backends: frozenset


KNOBS = {
    "cudnn": Knob("let torch's SDPA pick its cuDNN kernel (1) or not (0); matters for 'sdpa' on NVIDIA only",
                  torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp, frozenset({"sdpa"})),
    "lowp_reduction": Knob("SDPA math reduces in fp16/bf16 instead of float32 "
                           "(torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp)",
                           torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed,
                           torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp, frozenset({"sdpa", "sdpa_math"})),
}


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """A backend (or group) name with kernel options and torch knobs, e.g. ``"aiter:how_v3_bf16_cvt=2"``."""

    name: str
    options: tuple[tuple[str, object], ...] = ()
    knobs: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def parse(cls, spec: str | BackendChoice, **options) -> BackendChoice:
        """Parse and validate; unknown names, options, values and knob values raise with the valid ones."""
        if isinstance(spec, BackendChoice):
            items = dict(spec.options) | dict(spec.knobs) | options
            name = spec.name
        else:
            name, _, rest = str(spec).partition(":")
            items = {}
            for item in filter(None, (part.strip() for part in rest.split(","))):
                key, eq, value = item.partition("=")
                if not eq:
                    raise InvalidBackendSpecError(f"backend option {item!r} in {spec!r} must be written key=value, "
                                                  "e.g. 'aiter:how_v3_bf16_cvt=2' or 'sdpa:cudnn=0'")
                items[key.strip()] = _literal(value.strip())
            items.update(options)
        backend = registry.get_backend(name)  # unknown names raise UnknownBackendError with a suggestion
        knobs = {k: _flag(v, k, spec) for k, v in items.items() if k in KNOBS and k not in backend.options}
        for key in knobs:
            if backend.name not in KNOBS[key].backends:
                raise InvalidBackendSpecError(
                    f"knob '{key}' in {str(spec)!r} changes nothing for '{backend.name}' (it acts on "
                    f"{', '.join(sorted(KNOBS[key].backends))} only); drop it, or use it with one of those")
        opts = {k: v for k, v in items.items() if k not in knobs}
        unknown = set(opts) - set(backend.options)
        if unknown:
            valid = ", ".join(sorted(backend.options)) or "none"
            raise InvalidBackendSpecError(f"backend '{backend.name}' has no option {sorted(unknown)}; its options: "
                                          f"{valid}; torch knobs: {', '.join(sorted(KNOBS))}")
        for key, value in opts.items():
            valid = backend.option_values.get(key)
            why = valid(value) if callable(valid) else None  # an open set (e.g. any block size) says why not
            if why or (valid is not None and not callable(valid) and value not in valid):
                detail = f": {why}" if why else "; valid values: " + ", ".join(
                    f"{v!r} ({meaning})" for v, meaning in valid.items())
                raise InvalidBackendSpecError(f"backend '{backend.name}' option {key}={value!r} is not valid{detail}")
        return cls(backend.name, tuple(sorted(opts.items())), tuple(sorted(knobs.items())))

    def __str__(self):
        parts = [f"{k}={v}" for k, v in self.options] + [f"{k}={int(v)}" for k, v in self.knobs]
        return f"{self.name}:{','.join(parts)}" if parts else self.name

    @contextlib.contextmanager
    def knob_context(self):
        """Hold this choice's torch knobs (none: nothing) and restore them afterwards."""
        with contextlib.ExitStack() as undo:
            for key, value in self.knobs:
                undo.callback(KNOBS[key].write, KNOBS[key].read())
                KNOBS[key].write(bool(value))
            yield


def _literal(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


_FLAGS = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


def _flag(value, key: str, spec) -> bool:
    if str(value).lower() in _FLAGS:
        return _FLAGS[str(value).lower()]
    raise InvalidBackendSpecError(f"knob '{key}={value}' in {str(spec)!r} takes 0 or 1, e.g. 'sdpa:cudnn=0'")
