"""FLUX.2 with fluxlab: load, attach, schedules, capture, generate, and the tiny and embedded models.

``FLUX2_BACKENDS`` (the built-in backends a FLUX.2 model may use) and ``Rule`` (one entry of a ``Schedule``) are
reachable here; neither imports diffusers."""

from .attach import FLUX2_BACKENDS  # noqa: F401
from .schedule import Rule, Schedule  # noqa: F401
