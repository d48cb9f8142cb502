"""The verdict rules as data: how far from float64 a kernel may land before it is flagged, and why.
Exact kernels are judged against torch's own error in the same dtype; quantised ones against a budget.
"""

from __future__ import annotations

import dataclasses
import math

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
SEVERITY = {SKIP: -1, PASS: 0, WARN: 1, FAIL: 2}


@dataclasses.dataclass(frozen=True)
class ExactRule:
    """An exact kernel may be at most a small multiple worse than the yardstick: torch's SDPA math kernel in the
    same dtype (float32 inside), floored at the float64 answer rounded to the dtype (``rounding_*``)."""

    pass_rel_l2: float = 2.0  # rel_l2 <= 2 x yardstick
    warn_rel_l2: float = 4.0
    pass_max_abs: float = 4.0  # max_abs <= 4 x yardstick (an extreme value: noisier than rel_l2)
    warn_max_abs: float = 8.0


@dataclasses.dataclass(frozen=True)
class QuantisedBudget:
    """Quantised kernels (int8/fp8 inside) have their own absolute budget, whatever the dtype."""

    pass_rel_l2: float = 0.05  # cosine >= ~0.9987
    warn_rel_l2: float = 0.10


@dataclasses.dataclass(frozen=True)
class LseTolerance:
    """Max |lse - lse_float64| (natural log). In ring attention an LSE error e scales merged outputs by
    exp(e) ~ 1 + e, so for half dtypes it must stay below the output's own rounding."""

    pass_max_abs: float
    warn_max_abs: float


EXACT_RULE = ExactRule()
QUANTISED_BUDGET = QuantisedBudget()
# LSE is float32 in every kernel and scores are accumulated in float32, so the dtype matters little (measured:
# docs/compare.md).
LSE_TOLERANCE = {"bfloat16": LseTolerance(1e-3, 4e-3), "float16": LseTolerance(1e-3, 4e-3),
                 "float32": LseTolerance(2e-4, 1e-3), "float64": LseTolerance(2e-4, 1e-3)}
QUANTISED_LSE_TOLERANCE = LseTolerance(2e-2, 5e-2)  # not measured here: no quantised kernel returns an LSE yet


@dataclasses.dataclass(frozen=True)
class GateRule:
    """The gate beside the error size (``compare.gate``): limits derived from measured exact kernels by
    ``benchmarks/gate_thresholds.py`` (``derive_gate_rule``); docs/verdicts.md explains each."""

    bias_floor: float  # |mean error| / RMS allowed on any input ...
    bias_z: float  # ... or bias_z / sqrt(rows), whichever is larger (a mean over few rows is noisier)
    slice_pass: float  # worst head / batch element / segment: rel_l2 <= slice_pass x the yardstick on that slice
    slice_warn: float
    flip_margin_eps: float  # a row's float64 top channel is clear when it leads by > this x eps(dtype) x max|row|
    flip_pass: float  # share of clear rows whose top channel the kernel changes
    flip_warn: float
    # Quantised kernels: one slice may exceed their budget by as much as an exact kernel's slice limit exceeds the
    # whole-tensor rule (slice_pass / EXACT_RULE.pass_rel_l2).
    quantised_slice_pass: float = QUANTISED_BUDGET.pass_rel_l2
    quantised_slice_warn: float = QUANTISED_BUDGET.warn_rel_l2

    def bias_limit(self, rows: int) -> float:
        return max(self.bias_floor, self.bias_z / math.sqrt(max(rows, 1)))


FLIP_MARGIN_EPS = 4.0  # a clear top channel: ahead by > 4 eps of the row's largest value (see docs/verdicts.md)
# benchmarks/gate_thresholds.py derives these from its committed measurement files; tests/test_gate.py checks it.
GATE_RULE = GateRule(bias_floor=0.2, bias_z=9.7, slice_pass=3.3, slice_warn=6.6, flip_margin_eps=FLIP_MARGIN_EPS,
                     flip_pass=3.1e-06, flip_warn=1.6e-05, quantised_slice_pass=0.083, quantised_slice_warn=0.17)

# The table README and reports print (one row per rule).
RULE_TABLE = [
    ("exact kernel", "rel_l2 <= 2 x yardstick and max_abs <= 4 x yardstick",
     "rel_l2 <= 4 x and max_abs <= 8 x", "beyond warn"),
    ("quantised kernel (caps.quantised)", f"rel_l2 <= {QUANTISED_BUDGET.pass_rel_l2}",
     f"rel_l2 <= {QUANTISED_BUDGET.warn_rel_l2}", "beyond warn"),
    ("LSE, where returned", "max abs(lse - lse_fp64) <= 1e-3 (half dtypes), 2e-4 (fp32)", "<= 4e-3 / 1e-3",
     "beyond warn"),
    ("any kernel", "-", "-", "exception, NaN/inf, wrong shape or dtype"),
    ("the gate, any kernel (compare.gate)", "no bias; worst head / batch element / segment and top-channel flips "
     "within GATE_RULE", "worst slice or flips in the warn band; finite where float64 is NaN/inf",
     "biased; NaN/inf where float64 is finite; beyond warn"),
]

RULE_TEXT = """\
Verdicts (per backend and input; a backend's verdict is its worst over all inputs):

| kernel | pass | warn | fail |
|---|---|---|---|
""" + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in RULE_TABLE) + """

yardstick = max(torch SDPA math in the same dtype, float64 answer rounded to the dtype), measured on the
same inputs. Why these numbers (what correct kernels and planted bugs measure): docs/compare.md. The gate's
limits (bias, worst slice, flips) come from benchmarks/results/*/gate_thresholds.json through
benchmarks/gate_thresholds.py; docs/verdicts.md defines each statistic.
"""


def worst(verdicts) -> str:
    """The most severe of some verdicts (fail > warn > pass > skip)."""
    verdicts = list(verdicts)
    return max(verdicts, key=SEVERITY.__getitem__) if verdicts else SKIP


def grade(value: float, pass_limit: float, warn_limit: float) -> str:
    """pass / warn / fail of one number against its two limits (not finite: fail)."""
    if not math.isfinite(value):
        return FAIL
    return PASS if value <= pass_limit else WARN if value <= warn_limit else FAIL


def yardstick_ratios(stats, baseline, rounding) -> tuple[float, float]:
    """rel_l2 and max_abs of a kernel over the yardstick: max(torch math in the dtype, float64 rounded to it).
    Each argument has ``rel_l2`` and ``max_abs`` (``compare.metrics.ErrorStats``), all against float64."""
    return (stats.rel_l2 / _floor(max(baseline.rel_l2, rounding.rel_l2)),
            stats.max_abs / _floor(max(baseline.max_abs, rounding.max_abs)))


def _floor(value: float) -> float:
    return value if value > 0 else 1e-300


def judge_output(stats, baseline, rounding, *, quantised: bool) -> tuple[str, str]:
    """The one verdict rule for a kernel's output size, used by the comparison engine and the GPU tests alike."""
    if quantised:
        budget = QUANTISED_BUDGET
        return grade(stats.rel_l2, budget.pass_rel_l2, budget.warn_rel_l2), (
            f"quantised: rel_l2 {stats.rel_l2:.3g} against its budget (pass <= {budget.pass_rel_l2:g}, "
            f"warn <= {budget.warn_rel_l2:g})")
    rule = EXACT_RULE
    rel, top = yardstick_ratios(stats, baseline, rounding)
    verdict = worst([grade(rel, rule.pass_rel_l2, rule.warn_rel_l2), grade(top, rule.pass_max_abs, rule.warn_max_abs)])
    return verdict, (f"rel_l2 {rel:.2f}x yardstick (pass <= {rule.pass_rel_l2:g}x, warn <= {rule.warn_rel_l2:g}x); "
                     f"max_abs {top:.2f}x (pass <= {rule.pass_max_abs:g}x, warn <= {rule.warn_max_abs:g}x)")


def judge_lse(lse_max_abs: float, dtype_name: str, quantised: bool) -> tuple[str, str]:
    tol = QUANTISED_LSE_TOLERANCE if quantised else LSE_TOLERANCE.get(dtype_name, LSE_TOLERANCE["float32"])
    verdict = grade(lse_max_abs, tol.pass_max_abs, tol.warn_max_abs)
    return verdict, f"lse max_abs {lse_max_abs:.2g} (pass <= {tol.pass_max_abs:g}, warn <= {tol.warn_max_abs:g})"
