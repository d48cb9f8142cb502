"""The FLUX.2 integration's errors under their older names, kept importable from here: each is one of
``fluxlab.errors``' classes (see its docstring for the hierarchy)."""

from ..errors import (AttachError, CaptureError, CaptureLimitError, GenerationInterrupted,  # noqa: F401
                      InvalidSettingError, InvalidSizeError, LimitExceededError, LoadArgumentError, ModelSourceError,
                      PipelineBusyError, UnsupportedAttentionCallError)
