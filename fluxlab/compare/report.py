"""The result of a comparison: one row per backend and input, verdicts, and renderings (table, HTML, Markdown)."""

from __future__ import annotations

import dataclasses
import html
import math

from ..results import Result, format_cell, html_table, markdown_table
from .gate import GateStats
from .metrics import ErrorMap
from .tolerances import FAIL, PASS, SEVERITY, SKIP, WARN, worst

VERDICT_COLOURS = {PASS: "#c8e6c9", WARN: "#ffe0b2", FAIL: "#ffcdd2", SKIP: "#eeeeee"}


@dataclasses.dataclass
class ComparisonRow:
    """One backend on one input. Errors are against the float64 answer; ``baseline_*`` are torch's own."""

    backend: str  # the spec as written, e.g. "aiter:how_v3_bf16_cvt=0"
    input: str
    dtype: str
    shape: tuple[int, ...]  # q's [B, S, H, D]
    source: str = "synthetic"  # "synthetic" | "record" | "recorded output"
    seed: int | None = None
    quantised: bool = False
    emulates: str | None = None  # for an emulated backend: the real kernel it models (backends/emulated.py)
    verdict: str = FAIL
    max_abs: float = math.nan
    mean_abs: float = math.nan
    rel_l2: float = math.nan
    cosine: float = math.nan
    baseline_max_abs: float = math.nan
    baseline_mean_abs: float = math.nan
    baseline_rel_l2: float = math.nan
    baseline_cosine: float = math.nan
    rounding_rel_l2: float = math.nan  # the float64 answer rounded to the dtype: the least error possible
    rounding_max_abs: float = math.nan
    rel_l2_ratio: float = math.nan  # rel_l2 / yardstick (max of baseline and rounding)
    max_abs_ratio: float = math.nan
    lse_max_abs: float | None = None  # where the backend returns an LSE
    rel_l2_vs_recorded: float | None = None  # vs the output recorded in a capture/record file
    time_ms: float | None = None
    worst_head: int | None = None
    worst_head_rel_l2: float | None = None
    worst_token: int | None = None
    worst_token_rel_l2: float | None = None
    # The gate (compare.gate): bias, worst slices, clear top-channel flips, NaN/inf structure.
    bias: float | None = None  # mean error / RMS error, the larger of signed and toward-zero, with its sign
    bias_direction: str | None = None  # "toward +inf", "toward zero", ...
    biased: bool = False  # the bias is beyond the gate (a fail)
    worst_head_ratio: float | None = None  # the worst head's rel_l2 over the yardstick's on that head
    worst_batch_ratio: float | None = None  # the same per batch element (batch > 1)
    worst_segment_ratio: float | None = None  # text tokens vs image tokens (text length known)
    worst_slice: str | None = None  # e.g. "head 3", "batch 1", "text tokens"
    flip_rate: float | None = None  # share of clear rows whose top channel changed
    flipped_rows: int | None = None
    clear_rows: int | None = None
    nonfinite_where_finite: int | None = None
    finite_where_nonfinite: int | None = None
    fail_fraction: float | None = None  # the closest rule's value over its fail limit (>= 1: it fails)
    closest_rule: str | None = None  # which rule that is
    error: str | None = None  # exception text, NaN count, or why it was skipped
    notes: str = ""  # why this verdict
    error_map: ErrorMap | None = dataclasses.field(default=None, repr=False, compare=False)
    gate: GateStats | None = dataclasses.field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("error_map", "gate")}
        data["shape"] = "x".join(map(str, self.shape))
        return data

    def set_gate(self, stats: GateStats, biased: bool) -> None:
        """Copy the gate's statistics into the row's flat fields."""
        self.gate, self.biased = stats, biased
        self.bias, self.bias_direction = stats.bias, stats.bias_direction
        for kind in ("head", "batch", "segment"):
            piece = stats.worst_slice(kind)
            setattr(self, f"worst_{kind}_ratio", piece.ratio if piece else None)
        piece = stats.worst_slice()
        self.worst_slice = piece.label if piece else None
        self.flip_rate, self.flipped_rows, self.clear_rows = stats.flip_rate, stats.flipped_rows, stats.clear_rows
        self.nonfinite_where_finite = stats.nonfinite_where_finite
        self.finite_where_nonfinite = stats.finite_where_nonfinite


@dataclasses.dataclass(repr=False)
class ComparisonReport(Result):
    """``verdicts``: backend -> worst verdict over all inputs; ``rows``: the full table (and the result protocol,
    ``fluxlab.results``; ``figure()`` draws each backend's worst error map)."""

    rows: list[ComparisonRow]
    reference: str = "reference"
    baseline: str = ""
    platform: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def verdicts(self) -> dict[str, str]:
        """backend -> "pass" / "warn" / "fail" (worst over inputs); backends that never ran are left out."""
        by_backend: dict[str, list[str]] = {}
        for row in self.rows:
            if row.verdict != SKIP:
                by_backend.setdefault(row.backend, []).append(row.verdict)
        return {name: worst(v) for name, v in by_backend.items()}

    @property
    def skipped(self) -> dict[str, list[str]]:
        """backend -> why it could not run (for inputs where it did not)."""
        out: dict[str, list[str]] = {}
        for row in self.rows:
            if row.verdict == SKIP and row.error and row.error not in out.setdefault(row.backend, []):
                out[row.backend].append(row.error)
        return out

    @property
    def failed(self) -> bool:
        return FAIL in self.verdicts.values()

    def rows_for(self, backend: str) -> list[ComparisonRow]:
        return [r for r in self.rows if r.backend == backend]

    def worst(self, backend: str | None = None) -> ComparisonRow | None:
        """The worst row (by verdict, then by rel_l2 ratio or budget use), overall or for one backend."""
        rows = [r for r in self.rows if r.verdict != SKIP and (backend is None or r.backend == backend)]
        if not rows:
            return None

        def badness(row):
            ratio = row.rel_l2_ratio if not row.quantised else row.rel_l2 / 0.05
            return SEVERITY[row.verdict], row.error is not None, -math.inf if math.isnan(ratio) else ratio

        return max(rows, key=badness)

    def closest_to_failing(self, n: int = 5, backend: str | None = None) -> list[ComparisonRow]:
        """The ``n`` rows (of ``backend``, or all) whose closest rule uses the largest share of its fail limit:
        on captured inputs, the layers and steps a kernel is nearest to failing on."""
        rows = [r for r in self.rows if r.fail_fraction is not None and (backend is None or r.backend == backend)]
        return sorted(rows, key=lambda r: -r.fail_fraction)[:n]

    def closest_to_failing_rows(self, per_backend: int = 3) -> list[dict]:
        """Each backend's ``per_backend`` inputs closest to failing, as table lines."""
        names = list(dict.fromkeys(r.backend for r in self.rows))
        return [{"backend": r.backend, "input": r.input, "verdict": r.verdict, "closest rule": r.closest_rule,
                 "share of fail limit": r.fail_fraction, "bias": r.bias, "worst slice": r.worst_slice}
                for name in names for r in self.closest_to_failing(per_backend, name)]

    def summary_rows(self) -> list[dict]:
        """One line per backend: its verdict and its worst input."""
        lines = []
        for name, verdict in self.verdicts.items():
            row = self.worst(name)
            runs = [r for r in self.rows_for(name) if r.verdict != SKIP]
            times = [r.time_ms for r in runs if r.time_ms is not None]
            lines.append({
                "backend": name, "verdict": verdict, "quantised": row.quantised, "emulates": row.emulates,
                "inputs": len(runs),
                "worst input": f"{row.input} {row.dtype}" + (f" seed {row.seed}" if row.seed is not None else ""),
                "rel_l2": row.rel_l2, "x yardstick": row.rel_l2_ratio, "max_abs x": row.max_abs_ratio,
                "bias": row.bias, "worst slice": row.worst_slice,
                "median ms": sorted(times)[len(times) // 2] if times else None,
                "note": row.error or (row.notes if verdict != PASS else ""),
            })
        for name, reasons in self.skipped.items():
            if name not in self.verdicts:
                blank = dict.fromkeys(("rel_l2", "x yardstick", "max_abs x", "bias", "worst slice", "median ms"))
                lines.append({"backend": name, "verdict": SKIP, "quantised": False, "emulates": None, "inputs": 0,
                              "worst input": "", **blank, "note": "; ".join(reasons)})
        return lines

    # ------------------------------------------------------------------------------------------ renderings

    TABLE_COLUMNS = ("backend", "emulates", "input", "dtype", "seed", "verdict", "rel_l2", "baseline_rel_l2",
                     "rel_l2_ratio", "max_abs", "baseline_max_abs", "max_abs_ratio", "bias", "worst_slice", "flip_rate",
                     "mean_abs", "cosine", "lse_max_abs", "rel_l2_vs_recorded", "time_ms", "worst_head", "worst_token",
                     "fail_fraction", "notes")

    def headline(self) -> str:
        return f"Reference: float64 ({self.reference}); yardstick: {self.baseline}."

    def table_rows(self) -> list[dict]:
        """Every row (backend x input), as ``to_dataframe()`` shows them."""
        return [r.as_dict() for r in self.rows]

    def as_dict(self) -> dict:
        return {"reference": self.reference, "baseline": self.baseline, "verdicts": self.verdicts,
                "platform": self.platform, "meta": self.meta, "rows": self.table_rows()}

    def figure(self, path=None):
        """Each backend's worst input: where its error sits, per (head, token) (``plots.plot_error_maps``)."""
        from .plots import plot_error_maps

        return plot_error_maps(self, path=path)

    def _formatted(self) -> tuple[list[dict], list[dict], list[dict]]:
        """(summary, closest to failing, every row) with their cells formatted, for both renderings."""
        every = []
        for row in self.rows:
            data = row.as_dict()
            every.append({c: data[c] for c in self.TABLE_COLUMNS} | {"notes": row.error or row.notes})
        closest = self.closest_to_failing_rows() if any(r.source == "record" for r in self.rows) else []
        return tuple([{k: _cell(k, v) for k, v in line.items()} for line in lines]
                     for lines in (self.summary_rows(), closest, every))

    def to_markdown(self, *, details: bool = True) -> str:
        summary, closest, every = self._formatted()
        parts = [self.headline(), ""]
        if summary:
            parts.append(markdown_table(summary))
        if closest:
            parts += ["Closest to failing (the rule nearest its fail limit; 1.00 = at the limit):", "",
                      markdown_table(closest)]
        if details:
            parts.append(markdown_table(every))
        return "\n".join(parts)

    def to_html(self, *, details: bool = True) -> str:
        def verdict_style(key, text):
            return f"background:{VERDICT_COLOURS.get(text, '#fff')};font-weight:bold" if key == "verdict" else ""

        summary, _, every = self._formatted()
        parts = [f"<p>{html.escape(self.headline())}</p>"]
        if summary:
            parts.append(html_table(summary, cell_style=verdict_style))
        if details:
            parts.append(f"<details><summary>every input</summary>{html_table(every, cell_style=verdict_style)}"
                         "</details>")
        return "\n".join(parts)

    def __repr__(self):
        verdicts = ", ".join(f"{k}: {v}" for k, v in self.verdicts.items())
        return f"<ComparisonReport {len(self.rows)} rows; {verdicts}>"


_TWO_DECIMALS = {"rel_l2_ratio", "max_abs_ratio", "x yardstick", "max_abs x", "share of fail limit", "fail_fraction",
                 "bias", "time_ms", "median ms"}


def _cell(key, value) -> str:
    """Report cells: errors in scientific notation, ratios and times to 2 decimals, "-" for NaN, "yes" for True."""
    if isinstance(value, bool):
        return "yes" if value else ""
    return format_cell(value, ".2f" if key in _TWO_DECIMALS else ".6f" if key == "cosine" else ".2e")
