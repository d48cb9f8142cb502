"""``ComparisonPanel``: pick backends and a synthetic shape or a captured layer; verdicts, metrics and heatmaps."""

from __future__ import annotations

import html
import os

from ..compare.report import VERDICT_COLOURS
from ..util import torch_dtype_name
from ._common import (ERROR_STYLE, MUTED_STYLE, OK_STYLE, check_seed, figure_png, hbox_with_message,
                      message_html, run_shown, set_message, tagged, widgets)
from .picker import BackendPicker

DTYPES = ("bfloat16", "float16", "float32")
MAX_SEQ = 65536
MAX_HEADS = 256


def _records_list(records):
    """``records``: None, a list of AttentionRecord (from ``fluxlab.capture``), or a folder saved by save_records."""
    if records is None:
        return []
    if isinstance(records, (str, os.PathLike)):
        from ..compare.records import load_records

        return list(load_records(records)[0])
    return list(records)


def _positive_int(value, name, upper) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
        return f"{name} must be a whole number from 1 to {upper} (got {value!r})"
    return None


def verdict_badges(verdicts: dict, skipped: dict | None = None) -> str:
    """HTML: one coloured badge per backend with its verdict (class ``fluxlab-verdicts``)."""
    def badge(name, verdict, title):
        return (f'<span title="{html.escape(title)}" style="background:{VERDICT_COLOURS.get(verdict, "#fff")};'
                f'padding:2px 8px;margin:2px;border-radius:4px;display:inline-block"><code>{html.escape(name)}</code> '
                f"<b>{verdict.upper()}</b></span>")

    badges = [badge(name, verdict, f"{name}: {verdict}") for name, verdict in verdicts.items()]
    badges += [badge(name, "skip", "; ".join(reasons)) for name, reasons in (skipped or {}).items()
               if name not in verdicts]
    return '<div class="fluxlab-verdicts">' + "".join(badges) + "</div>"


class ComparisonPanel(widgets.VBox):
    """Compare the picked backends against float64 on one input: a synthetic FLUX-like shape or a captured layer.

    Shows a verdict per backend, the metrics table of :func:`fluxlab.compare.compare_attention` and the error
    heatmaps (per head and query token). ``records``: attention records from ``fluxlab.capture`` (or a folder
    written by ``save_records``) to offer as inputs. Errors (bad settings, a failing comparison) are shown in
    the panel; the last report is ``panel.report``.
    """

    def __init__(self, records=None, *, backends=None, statuses=None, seq: int = 512, heads: int = 4,
                 head_dim: int = 128, distribution: str = "normal", dtype: str = "bfloat16", seed: int = 0,
                 run_on_start: bool = False, heatmaps: bool = True):
        from ..compare.inputs import DISTRIBUTIONS

        self.records = _records_list(records)
        self.report = None
        self.last_error: str | None = None
        self.heatmaps = heatmaps
        self.picker = BackendPicker(statuses, multiple=True, exclude=("reference",), description="backends")
        if backends is not None:
            self.picker.value = tuple(backends)
        else:  # every backend that runs here
            self.picker.value = tuple(self.picker.available)
        picker_row, self.picker_message = hbox_with_message(self.picker)

        self.source = tagged(widgets.ToggleButtons(options=["synthetic shape", "captured layer"], description="input",
                                                   value="captured layer" if self.records else "synthetic shape"),
                             "fluxlab-input-source")
        small = widgets.Layout(width="170px")
        self.seq = widgets.IntText(value=seq, description="seq", layout=small)
        self.heads = widgets.IntText(value=heads, description="heads", layout=small)
        self.head_dim = widgets.IntText(value=head_dim, description="head_dim", layout=small)
        self.distribution = widgets.Dropdown(options=list(DISTRIBUTIONS), value=distribution,
                                             description="values", layout=widgets.Layout(width="220px"))
        self.dtype = widgets.Dropdown(options=DTYPES, value=dtype, description="dtype",
                                      layout=widgets.Layout(width="200px"))
        self.seed = widgets.IntText(value=seed, description="seed", layout=small)
        self.shape_message = tagged(widgets.HTML(""), "fluxlab-message")
        self.layer = widgets.Dropdown(options=self._layer_options(), description="layer",
                                      layout=widgets.Layout(width="520px"))
        layer_row, self.layer_message = hbox_with_message(self.layer)
        self.shape_box = widgets.VBox([widgets.HBox([self.seq, self.heads, self.head_dim, self.distribution]),
                                       widgets.HBox([self.dtype, self.seed, self.shape_message])])
        self.layer_box = widgets.VBox([layer_row])

        self.button = tagged(widgets.Button(description="Compare", button_style="primary", icon="balance-scale"),
                             "fluxlab-compare")
        self.status = tagged(widgets.HTML(message_html("not run yet")), "fluxlab-result")
        self.verdicts = widgets.HTML("")
        self.table = tagged(widgets.HTML(""), "fluxlab-metrics")
        self.heatmap = tagged(widgets.Image(format="png", layout=widgets.Layout(max_width="100%", display="none")),
                              "fluxlab-heatmap")

        self.button.on_click(lambda _: self.run())
        self.source.observe(lambda _: self._show_source(), names="value")
        super().__init__([picker_row, self.source, self.shape_box, self.layer_box,
                          widgets.HBox([self.button, self.status]), self.verdicts, self.table, self.heatmap])
        self.add_class("fluxlab-comparison-panel")
        self._show_source()
        if run_on_start:
            self.run()

    def _layer_options(self):
        if not self.records:
            return [("(no captured layers: pass records=fluxlab.capture(...) output)", None)]
        return [(f"{r.name}  {'x'.join(map(str, r.q.shape))} {torch_dtype_name(r.q.dtype)}", i)
                for i, r in enumerate(self.records)]

    def _show_source(self):
        synthetic = self.source.value == "synthetic shape"
        self.shape_box.layout.display = None if synthetic else "none"
        self.layer_box.layout.display = "none" if synthetic else None

    # --------------------------------------------------------------------------------------------- logic

    def _inputs(self):
        """(inputs, dtype) for compare_attention, or None after showing what is wrong."""
        from ..compare.inputs import InputSpec

        if self.source.value == "captured layer":
            if not self.records or self.layer.value is None:
                set_message(self.layer_message, "no captured layer to compare: capture some with fluxlab.capture, "
                                                "or switch to a synthetic shape")
                return None
            set_message(self.layer_message, "")
            return [self.records[self.layer.value]], None
        problem = (_positive_int(self.seq.value, "seq", MAX_SEQ) or _positive_int(self.heads.value, "heads", MAX_HEADS)
                   or _positive_int(self.head_dim.value, "head_dim", 512) or check_seed(self.seed.value))
        set_message(self.shape_message, problem or "")
        if problem:
            return None
        spec = InputSpec(self.seq.value, self.heads.value, self.head_dim.value, distribution=self.distribution.value)
        return [spec], self.dtype.value

    def run(self):
        """Run the comparison for the current settings; returns the report, or None (the reason is shown)."""
        from ..compare import compare_attention

        self.last_error = None
        if not self.picker.value:
            set_message(self.picker_message, "pick at least one backend")
            self.status.value = message_html("nothing to compare", ERROR_STYLE)
            return None
        set_message(self.picker_message, "")
        prepared = self._inputs()
        if prepared is None:
            self.status.value = message_html("fix the marked settings, then compare again", ERROR_STYLE)
            return None
        inputs, dtype = prepared
        self.status.value = message_html(f"comparing {', '.join(self.picker.value)} against float64 ...")
        kwargs = {"dtype": dtype, "seeds": (self.seed.value,)} if dtype else {}
        report = run_shown(self, self.status, "comparison", lambda: compare_attention(
            inputs=inputs, backends=list(self.picker.value), progress=False, **kwargs))
        if report is None:
            return None
        self.report = report
        self.show(report)
        return report

    def show(self, report) -> None:
        """Render ``report`` (a ComparisonReport) in the panel."""
        verdicts = report.verdicts
        failed = [n for n, v in verdicts.items() if v == "fail"]
        case = report.rows[0] if report.rows else None
        where = f" on {case.input} {case.dtype}" if case else ""
        style = ERROR_STYLE if failed else OK_STYLE
        text = (f"{len(verdicts)} backend(s) compared{where}: "
                + (f"FAIL for {', '.join(failed)}" if failed else "no failure"))
        self.status.value = message_html(text, style)
        self.verdicts.value = verdict_badges(verdicts, report.skipped)
        self.table.value = report.to_html(details=True)
        png = b""
        if self.heatmaps:
            try:
                from ..compare.plots import plot_error_maps

                png = figure_png(plot_error_maps(report))
            except ValueError as exc:  # nothing to draw (every backend failed or was skipped)
                self.table.value += f'<p style="{MUTED_STYLE}">{html.escape(str(exc))}</p>'
        self.heatmap.value = png
        self.heatmap.layout.display = None if png else "none"  # no broken-image icon while there is nothing
