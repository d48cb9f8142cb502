"""Decide, not only measure: where image drift is born, which schedule buys what, and a verdict-gated autotune."""

from .._compat import moved
from .autotune import (AutotuneResult, InvalidPlanError, Measurement, PlanMismatchError, PlanNotFoundError, autotune,
                       autotune_records)
from .confirm import Confirmation, StepTiming, confirm_plan, record_step
from .drift import Culprit, DriftMap, generation_bound, locate_drift
from .frontier import Frontier, FrontierRow, frontier
from .runs import DecideInputError

__all__ = ["AutotuneResult", "InvalidPlanError", "Measurement", "PlanMismatchError", "PlanNotFoundError", "autotune",
           "autotune_records", "Confirmation", "StepTiming", "confirm_plan", "record_step", "Culprit",
           "DecideInputError", "DriftMap", "Frontier", "FrontierRow", "frontier", "generation_bound", "locate_drift"]

__getattr__ = moved(__name__, {"AutotunePlan": "fluxlab.decide:AutotuneResult"})
