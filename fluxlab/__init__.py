"""fluxlab: which attention kernel to trust for FLUX.2, and how fast each one is."""

from .backends.base import Backend, Capabilities, Requirement
from .dispatch import (BackendChoice, attention, clear_caches, default_backend, reset_backend_choice, select_backend,
                       selected_backend, use_backend, validate_inputs)
from .doctor import BackendStatus, backends, doctor_text
from .errors import (BackendNotAllowedError, BackendOutputError, BackendUnavailableError, FallbackWarning,
                     FluxlabError, InvalidInputError, NoBackendError, UnknownBackendError)
from .platform import Platform, current_platform
from .registry import get_backend, register_backend, unregister_backend

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendChoice", "BackendNotAllowedError", "BackendOutputError", "BackendStatus",
    "BackendUnavailableError", "Capabilities", "FallbackWarning", "FluxlabError", "InvalidInputError",
    "NoBackendError", "Platform", "Requirement", "UnknownBackendError", "attention", "backends", "clear_caches",
    "current_platform", "default_backend", "doctor_text", "get_backend", "register_backend", "reset_backend_choice",
    "select_backend", "selected_backend", "unregister_backend", "use_backend", "validate_inputs",
]
