"""``ComparisonPanel``: pick backends and a synthetic shape or a captured layer; verdicts, metrics and heatmaps."""

from __future__ import annotations

import html
import os

from ..compare.report import VERDICT_COLOURS
from ..util import torch_dtype_name
from ._common import (ERROR_STYLE, MUTED_STYLE, OK_STYLE, Panel, check_seed, figure_png, hbox_with_message, int_box,
                      label, message_html, tagged, widgets)
from .picker import BackendPicker

DTYPES = ("bfloat16", "float16", "float32")
LIMITS = {"seq": 65536, "heads": 256, "head_dim": 512}  # the largest value each box takes


def _box_problem(value, name: str) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LIMITS[name]:
        return f"{name} must be a whole number from 1 to {LIMITS[name]} (got {value!r})"
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


class ComparisonPanel(Panel):
    """Compare the picked backends against float64 on a synthetic FLUX-like shape or a captured layer (``records``):
    verdicts, metrics and error heatmaps; the last report is ``panel.report`` (docs/notebooks.md)."""

    def __init__(self, records=None, *, backends=None, statuses=None, seq: int = 512, heads: int = 4,
                 head_dim: int = 128, distribution: str = "normal", dtype: str = "bfloat16", seed: int = 0,
                 run_on_start: bool = False, heatmaps: bool = True):
        from ..compare.inputs import DISTRIBUTIONS

        if isinstance(records, (str, os.PathLike)):  # a folder saved by save_records
            from ..compare.records import load_records

            records = load_records(records)[0]
        self.records = list(records or [])
        self.report = None
        self.heatmaps = heatmaps
        self.picker = BackendPicker(statuses, multiple=True, exclude=("reference",), description="backends")
        self.picker.value = tuple(self.picker.available if backends is None else backends)  # default: all that run
        picker_row, self.picker_message = hbox_with_message(self.picker)

        self.source = tagged(widgets.ToggleButtons(options=["synthetic shape", "captured layer"], description="input",
                                                   value="captured layer" if self.records else "synthetic shape"),
                             "fluxlab-input-source")
        self.seq, self.heads, self.head_dim = (int_box(v, name) for name, v in
                                               (("seq", seq), ("heads", heads), ("head_dim", head_dim)))
        self.distribution = widgets.Dropdown(options=list(DISTRIBUTIONS), value=distribution,
                                             description="values", layout=widgets.Layout(width="220px"))
        self.dtype = widgets.Dropdown(options=DTYPES, value=dtype, description="dtype",
                                      layout=widgets.Layout(width="200px"))
        self.seed = int_box(seed, "seed")
        self.shape_message = label("fluxlab-message")
        self.layer = widgets.Dropdown(options=self._layer_options(), description="layer",
                                      layout=widgets.Layout(width="520px"))
        layer_row, self.layer_message = hbox_with_message(self.layer)
        self.shape_box = widgets.VBox([widgets.HBox([self.seq, self.heads, self.head_dim, self.distribution]),
                                       widgets.HBox([self.dtype, self.seed, self.shape_message])])
        self.layer_box = widgets.VBox([layer_row])

        self.button = tagged(widgets.Button(description="Compare", button_style="primary", icon="balance-scale"),
                             "fluxlab-compare")
        self.status = label("fluxlab-result", value=message_html("not run yet"))
        self.verdicts = widgets.HTML("")
        self.table = label("fluxlab-metrics")
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

    def _inputs(self):
        """(inputs, dtype) for compare_attention, or None after showing what is wrong."""
        from ..compare.inputs import InputSpec

        if self.source.value == "captured layer":
            missing = not self.records or self.layer.value is None
            if self.checked({self.layer_message: "no captured layer to compare: capture some with fluxlab.capture, "
                             "or switch to a synthetic shape" if missing else None}):
                return [self.records[self.layer.value]], None
            return None
        problem = next(filter(None, (_box_problem(getattr(self, name).value, name) for name in LIMITS)), None)
        if not self.checked({self.shape_message: problem or check_seed(self.seed.value)}):
            return None
        spec = InputSpec(self.seq.value, self.heads.value, self.head_dim.value, distribution=self.distribution.value)
        return [spec], self.dtype.value

    def run(self):
        """Run the comparison for the current settings; returns the report, or None (the reason is shown)."""
        from ..compare import compare_attention

        self.last_error = None
        if not self.checked({self.picker_message: None if self.picker.value else "pick at least one backend"}):
            return self.refuse("nothing to compare")
        prepared = self._inputs()
        if prepared is None:
            return self.refuse("fix the marked settings, then compare again")
        inputs, dtype = prepared
        self.say(f"comparing {', '.join(self.picker.value)} against float64 ...")
        kwargs = {"dtype": dtype, "seeds": (self.seed.value,)} if dtype else {}
        report = self.attempt(lambda: compare_attention(inputs=inputs, backends=list(self.picker.value),
                                                        progress=False, **kwargs), lambda: "comparison failed")
        if report is not None:
            self.report = report
            self.show(report)
        return report

    def show(self, report) -> None:
        """Render ``report`` (a ComparisonReport) in the panel."""
        failed = [n for n, v in report.verdicts.items() if v == "fail"]
        where = f" on {report.rows[0].input} {report.rows[0].dtype}" if report.rows else ""
        self.say(f"{len(report.verdicts)} backend(s) compared{where}: "
                 + (f"FAIL for {', '.join(failed)}" if failed else "no failure"), ERROR_STYLE if failed else OK_STYLE)
        self.verdicts.value = verdict_badges(report.verdicts, report.skipped)
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
