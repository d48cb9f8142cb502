"""FLUX.2 model construction: tiny offline pipelines for tests and notebooks (``tiny``).

``FLUX2_BACKENDS`` (the built-in backends a FLUX.2 model may use) and ``Rule`` (one entry of a ``Schedule``) are
reachable here; neither imports diffusers."""

from .schedule import Rule, Schedule  # noqa: F401
from .supported import FLUX2_BACKENDS  # noqa: F401
