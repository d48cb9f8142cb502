"""Decide, not only measure: where image drift is born, which schedule buys what, and a verdict-gated autotune."""

from .drift import Culprit, DriftMap, generation_bound, locate_drift
from .runs import DecideInputError

__all__ = ["Culprit", "DecideInputError", "DriftMap", "generation_bound", "locate_drift"]
