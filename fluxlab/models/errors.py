"""Errors of the FLUX.2 integration (attach, capture, loading); each message names the problem and the fix."""

from __future__ import annotations

from ..errors import FluxlabError


class AttachError(FluxlabError, RuntimeError):
    """fluxlab is already attached to this model, or not attached where it must be."""


class UnsupportedAttentionCallError(FluxlabError, ValueError):
    """diffusers made an attention call fluxlab's kernels cannot serve faithfully (mask, dropout, context parallel)."""


class CaptureError(FluxlabError, ValueError):
    """A capture selects nothing, or selects something that does not exist."""


class CaptureLimitError(FluxlabError, MemoryError):
    """Recording the next attention call would exceed the capture's ``max_bytes``."""


class ModelSourceError(FluxlabError, FileNotFoundError):
    """``load_flux2`` cannot find or read the model it was pointed at."""


class LoadArgumentError(FluxlabError, ValueError):
    """``load_flux2`` arguments that contradict each other or cannot apply to the chosen model."""


class InvalidSizeError(FluxlabError, ValueError):
    """An image size FLUX.2 cannot generate (not a positive multiple of 16)."""


class InvalidSettingError(FluxlabError, ValueError):
    """A generation setting no pipeline can run: steps below 1 or fractional, a seed outside 0..2**63-1."""


class PipelineBusyError(FluxlabError, RuntimeError):
    """An attached pipeline was called while it is generating: a pipeline serves one generation at a time."""


class LimitExceededError(FluxlabError, ValueError):
    """A generation beyond fluxlab's documented bounds (``fluxlab.models.limits.BOUNDS``); ``force=True`` runs it."""


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``generate`` between denoising steps. ``results`` holds what finished (the interrupted
    backend's marked ``"interrupted": true`` with ``completed_steps``, or absent if it stopped mid-step)."""

    def __init__(self, message: str, results: list, backend: str, completed_steps: int, steps: int):
        super().__init__(message)
        self.results, self.backend, self.completed_steps, self.steps = results, backend, completed_steps, steps
