"""fluxlab: which attention kernel to trust for FLUX.2, and how fast each one is."""

import importlib as _importlib
import sys as _sys
import types as _types

from . import errors
from ._compat import moved as _moved_from
from .errors import FluxlabError
from .version import __version__

# The public surface (the README's API table), each loaded on first use: everything here needs torch, and the
# FLUX.2 integration imports diffusers (seconds), so `import fluxlab` (and `fluxlab --help`) stays light.
_PUBLIC = {
    "attention": "fluxlab.dispatch", "plan": "fluxlab.dispatch", "Plan": "fluxlab.dispatch",
    "use_backend": "fluxlab.dispatch", "clear_caches": "fluxlab.dispatch",
    "backends": "fluxlab.doctor", "doctor_text": "fluxlab.doctor",
    "Backend": "fluxlab.backends.base", "Capabilities": "fluxlab.backends.base", "register_backend": "fluxlab.registry",
    "current_platform": "fluxlab.platform",
    "load_flux2": "fluxlab.models.load", "generate": "fluxlab.models.generate", "capture": "fluxlab.models.capture",
    "attach": "fluxlab.models.attach", "detach": "fluxlab.models.attach", "set_backend": "fluxlab.models.attach",
    "set_schedule": "fluxlab.models.attach", "Schedule": "fluxlab.models.schedule",
    "compare_attention": "fluxlab.compare", "compare_images": "fluxlab.compare",
    "locate_drift": "fluxlab.decide", "frontier": "fluxlab.decide", "autotune": "fluxlab.decide",
}

# Names that were top-level before: still served from their module for one release, with a DeprecationWarning.
_MOVED = {
    **{name: f"fluxlab.errors:{name}" for name in (
        "InvalidInputError", "UnknownBackendError", "BackendUnavailableError", "BackendNotAllowedError",
        "NoBackendError", "InvalidBackendSpecError", "BackendOutputError", "FluxlabWarning", "FallbackWarning",
        "DiffusersBackendWarning")},
    **{name: f"fluxlab.dispatch:{name}" for name in (
        "BackendChoice", "default_backend", "reset_backend_choice", "selected_backend", "validate_inputs")},
    "Requirement": "fluxlab.backends.base:Requirement",
    "BackendStatus": "fluxlab.doctor:BackendStatus", "Platform": "fluxlab.platform:Platform",
    "get_backend": "fluxlab.registry:get_backend", "unregister_backend": "fluxlab.registry:unregister_backend",
    "FLUX2_BACKENDS": "fluxlab.models:FLUX2_BACKENDS", "Rule": "fluxlab.models:Rule",
    "DriftMap": "fluxlab.decide:DriftMap", "Frontier": "fluxlab.decide:Frontier",
    "AutotunePlan": "fluxlab.decide:AutotuneResult",
}

# Modules reachable as attributes after a plain ``import fluxlab`` (``fluxlab.compare.IMAGE_RULE_TEXT``,
# ``fluxlab.registry.unregister_backend``), imported on first use. Not "backends": that name is the function.
_MODULES = ("compare", "decide", "models", "widgets", "parallel", "dispatch", "registry", "platform", "choice",
            "doctor")


_moved = _moved_from(__name__, _MOVED, stacklevel=3)


def __getattr__(name):
    if name in _MODULES:
        return _importlib.import_module(f"fluxlab.{name}")
    if name not in _PUBLIC:
        return _moved(name)  # an old name (with a DeprecationWarning), else AttributeError
    globals()[name] = getattr(_importlib.import_module(_PUBLIC[name]), name)
    return globals()[name]


class _Package(_types.ModuleType):
    """``fluxlab.backends`` is the function that lists the backends (as it always was), even after the
    ``fluxlab.backends`` sub-package (the adapters) is imported, which would otherwise rebind the name."""

    def __setattr__(self, name, value):
        if name == "backends" and isinstance(value, _types.ModuleType):
            return  # the sub-package stays reachable as sys.modules["fluxlab.backends"]
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted({*globals(), *_PUBLIC})


__all__ = ["FluxlabError", *_PUBLIC]
