"""fluxlab: which attention kernel to trust for FLUX.2, and how fast each one is."""

import sys as _sys
import types as _types

from .errors import (BackendNotAllowedError, BackendOutputError, BackendUnavailableError, FallbackWarning,
                     FluxlabError, FluxlabWarning, InvalidBackendSpecError, InvalidInputError, NoBackendError,
                     UnknownBackendError)

from .version import __version__

# Everything that needs torch loads on first use, so `import fluxlab` (and `fluxlab --help`) stays light.
_CORE = {
    "Backend": "fluxlab.backends.base", "Capabilities": "fluxlab.backends.base", "Requirement": "fluxlab.backends.base",
    **{name: "fluxlab.dispatch" for name in ("BackendChoice", "Plan", "attention", "clear_caches", "default_backend",
                                              "plan", "reset_backend_choice", "selected_backend", "use_backend",
                                              "validate_inputs")},
    "BackendStatus": "fluxlab.doctor", "backends": "fluxlab.doctor", "doctor_text": "fluxlab.doctor",
    "Platform": "fluxlab.platform", "current_platform": "fluxlab.platform",
    "get_backend": "fluxlab.registry", "register_backend": "fluxlab.registry", "unregister_backend": "fluxlab.registry",
}

# The FLUX.2 integration imports diffusers (seconds); it loads on first use so `import fluxlab` stays light.
_LAZY = {
    **_CORE,
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


# Subpackages reachable as attributes after a plain ``import fluxlab`` (``fluxlab.compare.IMAGE_RULE_TEXT``),
# imported on first use like the names above.
_SUBPACKAGES = ("compare", "decide", "models", "widgets", "parallel")  # not "backends": that name is the function


def __getattr__(name):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"fluxlab.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fluxlab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(_types.ModuleType):
    """``fluxlab.backends`` is the function that lists the backends (as it always was), even after the
    ``fluxlab.backends`` sub-package (the adapters) is imported, which would otherwise rebind the name."""

    def __setattr__(self, name, value):
        if name == "backends" and isinstance(value, _types.ModuleType):
            return  # the sub-package stays reachable as sys.modules["fluxlab.backends"]
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


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
