"""fluxlab: which attention kernel to trust for FLUX.2, and how fast each one is."""

from .backends.base import Backend, Capabilities, Requirement
from .dispatch import (BackendChoice, Plan, attention, clear_caches, default_backend, plan, reset_backend_choice,
                       selected_backend, use_backend, validate_inputs)
from .doctor import BackendStatus, backends, doctor_text
from .errors import (BackendNotAllowedError, BackendOutputError, BackendUnavailableError, FallbackWarning,
                     FluxlabError, FluxlabWarning, InvalidBackendSpecError, InvalidInputError, NoBackendError,
                     UnknownBackendError)
from .platform import Platform, current_platform
from .registry import get_backend, register_backend, unregister_backend

from .version import __version__

# The FLUX.2 integration imports diffusers (seconds); it loads on first use so `import fluxlab` stays light.
_LAZY = {
    "FLUX2_BACKENDS": "fluxlab.models.supported",
    "load_flux2": "fluxlab.models.load",
    "generate": "fluxlab.models.generate",
    "attach": "fluxlab.models.attach",
    "detach": "fluxlab.models.attach",
    "set_backend": "fluxlab.models.attach",
    "set_schedule": "fluxlab.models.attach",
    "Schedule": "fluxlab.models.schedule",
    "Rule": "fluxlab.models.schedule",
    "capture": "fluxlab.models.capture",
    "DiffusersBackendWarning": "fluxlab.models.interop",
    # The comparison engine (pulls in numpy plotting/metrics helpers on first use).
    "compare_attention": "fluxlab.compare",
    "compare_images": "fluxlab.compare",
    # Decide: drift localisation, speed-fidelity frontier, verdict-gated autotune.
    "locate_drift": "fluxlab.decide",
    "DriftMap": "fluxlab.decide",
    "autotune": "fluxlab.decide",
    "AutotunePlan": "fluxlab.decide",
    "frontier": "fluxlab.decide",
    "Frontier": "fluxlab.decide",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fluxlab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Backend", "BackendChoice", "BackendNotAllowedError", "BackendOutputError", "BackendStatus",
    "BackendUnavailableError", "Capabilities", "FallbackWarning", "FluxlabError", "FluxlabWarning",
    "InvalidBackendSpecError", "InvalidInputError", "NoBackendError", "Plan", "Platform", "Requirement",
    "UnknownBackendError", "attention", "backends", "clear_caches", "current_platform", "default_backend",
    "doctor_text", "get_backend", "plan", "register_backend", "reset_backend_choice", "selected_backend",
    "unregister_backend", "use_backend", "validate_inputs",
    *_LAZY,
]
