"""Numerical equivalence of attention backends: against float64, judged by torch's own error; images; records."""

from .attention import compare_attention, compare_captured, parse_dtype, replay
from .gate import GateStats, Judgement, Yardstick, judge_attention
from .bands import IMAGE_RULE_TEXT, YARDSTICK_BACKENDS, ImageBand
from .images import ImageComparison, ImageRow, compare_images, measure_image_band
from .invariance import GenerationInvarianceReport, InvarianceReport, check_generation_invariance, check_invariance
from .inputs import (CPU_INPUTS, DISTRIBUTIONS, FLUX_INPUTS, SMOKE_INPUTS, AttentionCase, InputSpec, default_inputs,
                     synthetic_qkv)
from .metrics import ErrorMap, ErrorStats, error_map, error_stats
from .plots import plot_error_maps, plot_image_comparison
from .records import RecordIntegrityError, RecordsFolderError, RecordsNotFoundError, load_records, save_records
from .report import ComparisonReport, ComparisonRow
from .specs import KNOBS, BackendSpec
from .sweep import run_compare
from .tolerances import EXACT_RULE, GATE_RULE, LSE_TOLERANCE, QUANTISED_BUDGET, RULE_TABLE, RULE_TEXT

__all__ = [
    "CPU_INPUTS", "DISTRIBUTIONS", "EXACT_RULE", "GATE_RULE", "GateStats", "ImageBand", "measure_image_band",
    "IMAGE_RULE_TEXT", "GenerationInvarianceReport", "InvarianceReport", "Judgement", "Yardstick",
    "check_generation_invariance", "check_invariance", "compare_captured",
    "judge_attention",
    "YARDSTICK_BACKENDS", "FLUX_INPUTS", "KNOBS", "LSE_TOLERANCE", "QUANTISED_BUDGET",
    "RULE_TABLE", "RULE_TEXT", "SMOKE_INPUTS", "AttentionCase", "BackendSpec", "ComparisonReport", "ComparisonRow",
    "ErrorMap", "ErrorStats", "ImageComparison", "ImageRow", "InputSpec", "RecordIntegrityError",
    "RecordsFolderError", "RecordsNotFoundError", "compare_attention",
    "compare_images", "default_inputs", "error_map", "error_stats", "load_records", "parse_dtype", "plot_error_maps",
    "plot_image_comparison", "replay", "run_compare", "save_records", "synthetic_qkv",
]
