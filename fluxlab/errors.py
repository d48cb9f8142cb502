"""Errors fluxlab raises. Each message names the problem and the fix."""

from __future__ import annotations


class FluxlabError(Exception):
    """Base class for fluxlab's own errors."""


class InvalidInputError(FluxlabError, ValueError):
    """The attention inputs break the [batch, seq, heads, head_dim] contract."""


class UnknownBackendError(FluxlabError, KeyError):
    """No backend of that name (the message suggests the closest)."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(FluxlabError, RuntimeError):
    """The requested backend cannot run these inputs here; ``reasons`` says why."""

    def __init__(self, message: str, reasons: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.reasons = reasons or {}


class BackendNotAllowedError(BackendUnavailableError):
    """The backend is outside the set the model allows; fluxlab refuses rather than substitute."""


class NoBackendError(BackendUnavailableError):
    """Nothing qualifies; ``reasons`` maps every backend to why it was not picked."""


class InvalidBackendSpecError(FluxlabError, ValueError):
    """A backend spec ("name:option=value,knob=value") names an option or a value the backend does not take."""


class BackendOutputError(FluxlabError, RuntimeError):
    """A backend returned something that breaks the contract (shape, dtype, missing LSE)."""


class FluxlabWarning(UserWarning):
    """Base class for fluxlab's warnings (filter them all with ``warnings.filterwarnings(..., FluxlabWarning)``)."""


class FallbackWarning(FluxlabWarning):
    """The caller opted into fallback and a different backend than requested ran."""


class BadReferenceError(FluxlabError, RuntimeError):
    """The backend a comparison measures the others against is not exact and finite here (NaN/inf, approximate by
    design, or outside the exact-kernel band against the float64 reference); the message says which and why."""


class LayoutWarning(FluxlabWarning):
    """The inputs' head axis is longer than their sequence axis: they may be [batch, heads, seq, head_dim]."""


class BackendRegistrationError(FluxlabError, ValueError, TypeError):
    """``register_backend`` was given a name, function or capability that cannot work (said before any call)."""


class ResultFileError(FluxlabError, OSError):
    """A result file cannot be written where asked; the message names that path (not a temporary file)."""
