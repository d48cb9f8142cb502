"""Numerical equivalence of attention backends: against float64, judged by torch's own error; images; records."""

from .attention import compare_attention, parse_dtype
from .inputs import CPU_INPUTS, DISTRIBUTIONS, FLUX_INPUTS, AttentionCase, InputSpec, default_inputs, synthetic_qkv
from .metrics import ErrorMap, ErrorStats, error_map, error_stats
from .report import ComparisonReport, ComparisonRow
from .specs import KNOBS, BackendSpec
from .tolerances import EXACT_RULE, LSE_TOLERANCE, QUANTISED_BUDGET, RULE_TEXT

__all__ = [
    "CPU_INPUTS", "DISTRIBUTIONS", "EXACT_RULE", "FLUX_INPUTS", "KNOBS", "LSE_TOLERANCE", "QUANTISED_BUDGET",
    "RULE_TEXT", "AttentionCase", "BackendSpec", "ComparisonReport", "ComparisonRow", "ErrorMap", "ErrorStats",
    "InputSpec", "compare_attention", "default_inputs", "error_map", "error_stats", "parse_dtype", "synthetic_qkv",
]
