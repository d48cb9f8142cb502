"""Deprecated: the FLUX.2 integration's errors live in ``fluxlab.errors``; importing them from here still works for
one release, with a ``DeprecationWarning``."""

from .._compat import moved

__getattr__ = moved(__name__, {name: f"fluxlab.errors:{name}" for name in (
    "AttachError", "CaptureError", "CaptureLimitError", "GenerationInterrupted", "InvalidSettingError",
    "InvalidSizeError", "LimitExceededError", "LoadArgumentError", "ModelSourceError", "PipelineBusyError",
    "UnsupportedAttentionCallError")})
