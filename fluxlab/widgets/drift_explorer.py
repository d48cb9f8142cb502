"""``DriftExplorer``: a DriftMap's (layer x step) grid as buttons; a click shows the image with only that cell bad."""

from __future__ import annotations

import dataclasses
import html
import math
import threading

from ._common import (ERROR_STYLE, MUTED_STYLE, OK_STYLE, error_text, figure_png, message_html, png_bytes, tagged,
                      widgets)
from .running import RunControls

# Above this many cells the grid is drawn as the map's heatmap, and cells are picked with the two menus only.
MAX_CELL_BUTTONS = 600
UNSCORED_COLOUR = "#eeeeee"  # cells locate_drift never split down to


@dataclasses.dataclass
class CellView:
    """One cell's generation: ``run`` (latents after every step, image) and ``fidelity`` against all good."""

    layer: str
    step: int
    run: object  # fluxlab.decide.runs.Run
    fidelity: dict  # fluxlab.decide.fidelity.fidelity(run, all-good run)


def _number(value: float) -> str:
    if math.isnan(value):
        return "\u00b7"  # not scored
    if math.isinf(value):
        return "inf"
    return "0" if value == 0 else f"{value:.1e}"


def cell_colours(value: float, vmax: float) -> tuple[str, str]:
    """(background, text) colours of a cell: magma by contribution / vmax, grey where it was not scored."""
    if math.isnan(value):
        return UNSCORED_COLOUR, "#616161"
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    share = 1.0 if math.isinf(value) else min(max(value / vmax, 0.0), 1.0) if vmax > 0 else 0.0
    rgba = colormaps["magma"](0.1 + 0.85 * share)
    luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    return to_hex(rgba), ("#ffffff" if luminance < 0.5 else "#000000")


class DriftExplorer(widgets.VBox):
    """Click a cell of ``drift_map`` (from ``fluxlab.locate_drift`` on ``pipe``): the image generated with ``bad``
    in that attention layer at that step only and ``good`` everywhere else, beside the all-good and all-bad images,
    with the cell's final-latent rel-L2 and PSNR against all good.

    The runs are locate_drift's own (``DriftMap.replay``: same prompt, seed, steps, size, schedules). Nothing is
    generated until a click; every cell, and the two end images, are kept, so clicking a cell again generates
    nothing. In a Jupyter kernel the generation runs in the background (progress bar, Cancel); a failure is shown
    here, never raised into the kernel. Grids of more than ``max_buttons`` cells are shown as the map's heatmap,
    with cells picked from the two menus.
    """

    def __init__(self, pipe, drift_map, *, image_width: int = 160, threaded: bool | None = None,
                 max_buttons: int = MAX_CELL_BUTTONS):
        self.drift = drift_map
        self.replay = drift_map.replay(pipe)  # refuses a map without schedules or from another model, now
        self.runner = RunControls(threaded)
        self.views: dict[tuple[str, int], CellView] = {}
        self.good_run = self.bad_run = None  # the two end runs, generated with the first cell
        self.bad_fidelity: dict | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one generation at a time, whichever thread a click arrives on

        layers, steps = list(drift_map.layers), drift_map.steps
        self.layer = widgets.Dropdown(options=[(n.removesuffix(".attn"), n) for n in layers], description="layer",
                                      layout=widgets.Layout(width="320px"))
        self.step = widgets.Dropdown(options=list(range(steps)), description="step",
                                     layout=widgets.Layout(width="160px"))
        top = drift_map.cells(1)
        if top:
            self.layer.value, self.step.value = top[0].layer, top[0].steps[0]
        self.button = tagged(widgets.Button(description="Show this cell", icon="play", button_style="primary"),
                             "fluxlab-generate")
        self.button.on_click(lambda _: self.click(self.layer.value, self.step.value))
        self.buttons: dict[tuple[str, int], widgets.Button] = {}
        grid = self._grid(layers, steps) if len(layers) * steps <= max_buttons else self._heatmap()
        self.status = tagged(widgets.HTML(message_html("click a cell: nothing is generated until then")),
                             "fluxlab-result")
        self.error = tagged(widgets.HTML(""), "fluxlab-error")
        self.cards = {key: self._card(image_width) for key in ("good", "cell", "bad")}
        intro = widgets.HTML(
            f"<b>good</b> <code>{html.escape(drift_map.good)}</code> &rarr; <b>bad</b> "
            f"<code>{html.escape(drift_map.bad)}</code>: a cell is one attention layer at one denoising step. "
            f"<span style='{MUTED_STYLE}'>Numbers: final-latent rel-L2 with only that cell bad (colour: share of the "
            f"strongest); \u00b7 = not scored by locate_drift.</span>")
        super().__init__([intro, grid, widgets.HBox([self.layer, self.step, self.button]), self.status,
                          self.runner.box, self.error,
                          widgets.HBox([self.cards[k][0] for k in ("good", "cell", "bad")])])
        self.add_class("fluxlab-drift-explorer")

    # -------------------------------------------------------------------------------------------- building

    def _grid(self, layers, steps) -> widgets.GridBox:
        import numpy as np

        finite = self.drift.grid[np.isfinite(self.drift.grid)]
        self._vmax = float(finite.max()) if finite.size else 0.0  # one colour scale: the strongest scored cell
        cells = [widgets.HTML("")] + [widgets.HTML(f"<b>step {s}</b>") for s in range(steps)]
        for row, layer in enumerate(layers):
            cells.append(widgets.HTML(f"<code>{html.escape(layer.removesuffix('.attn'))}</code>"))
            for step in range(steps):
                value = float(self.drift.grid[row, step])
                button = widgets.Button(description=_number(value), tooltip=self._tooltip(layer, step, value),
                                        layout=widgets.Layout(width="auto", padding="0 2px"))
                button.style.font_size = "11px"
                self._colour(button, value)
                tagged(button, "fluxlab-drift-cell", f"fluxlab-drift-cell-{row}-{step}")  # hooks for browser tests
                button.on_click(lambda _, layer=layer, step=step: self.click(layer, step))
                self.buttons[(layer, step)] = button
                cells.append(button)
        return tagged(widgets.GridBox(cells, layout=widgets.Layout(
            grid_template_columns=f"max-content repeat({steps}, 72px)", grid_gap="2px 2px", align_items="center")),
            "fluxlab-drift-grid")

    def _colour(self, button: widgets.Button, value: float) -> None:
        button.style.button_color, button.style.text_color = cell_colours(value, self._vmax)

    def _heatmap(self) -> widgets.Image:
        return tagged(widgets.Image(value=figure_png(self.drift.figure()), format="png",
                                    layout=widgets.Layout(max_width="900px")), "fluxlab-drift-grid")

    @staticmethod
    def _card(image_width: int) -> tuple[widgets.VBox, widgets.HTML, widgets.Image]:
        caption = widgets.HTML("")
        image = tagged(widgets.Image(format="png", layout=widgets.Layout(width=f"{image_width}px", display="none")),
                       "fluxlab-image")
        box = tagged(widgets.VBox([caption, image], layout=widgets.Layout(margin="4px 12px 4px 0")),
                     "fluxlab-drift-card")
        return box, caption, image

    def _tooltip(self, layer: str, step: int, value: float) -> str:
        where = f"{layer} at step {step}"
        if math.isnan(value):
            return f"{where}: not scored by locate_drift; click to generate it"
        return f"{where}: final-latent rel-L2 {value:.3g} with only this cell bad; click for its image"

    # ------------------------------------------------------------------------------------------------ logic

    @property
    def generations(self) -> int:
        """How many generations this explorer ran (a cached cell costs none)."""
        return self.replay.runner.count

    def click(self, layer: str, step: int) -> None:
        """What a click on the cell does: show it, generating in the background inside a Jupyter kernel. A layer or
        step not in the map raises ``DecideInputError`` naming the valid ones."""
        self.replay.cell(layer, step)  # checked before the menus take the value
        self.layer.value, self.step.value = layer, step
        self.runner.launch(lambda: self.show(layer, step))

    def show(self, layer: str, step: int) -> CellView | None:
        """Show the cell (generated now, or from the cache); None when it failed, was cancelled or is refused."""
        if not self._lock.acquire(blocking=False):
            self.status.value = message_html("a generation is running: wait for it, or press Cancel", ERROR_STYLE)
            return None
        try:
            return self._show(layer, step)
        finally:
            self._lock.release()

    def _show(self, layer: str, step: int) -> CellView | None:
        from ..decide.fidelity import fidelity
        from ..models.progress import GenerationCancelled

        self.last_error, self.error.value = None, ""
        key = (layer, step)
        if key in self.views:
            self._display(self.views[key], cached=True)
            return self.views[key]
        where = f"{layer.removesuffix('.attn')} at step {step}"
        outcome = "failed"
        self.runner.begin()
        try:
            cell = self.replay.cell(layer, step)
            todo = [name for name, run in (("all good", self.good_run), ("all bad", self.bad_run)) if run is None]
            self.runner.control.start(self.drift.steps * (len(todo) + 1))
            self.status.value = message_html(f"generating {', '.join(todo + [f'only {where} bad'])} ...")
            if self.good_run is None:
                self.good_run = self.replay.run(None, control=self.runner.control)
            if self.bad_run is None:
                self.bad_run = self.replay.run(self.replay.all_cells, control=self.runner.control)
                self.bad_fidelity = fidelity(self.bad_run, self.good_run)
            run = self.replay.run(cell, control=self.runner.control)
            view = CellView(layer, step, run, fidelity(run, self.good_run))
            outcome = "success"
        except GenerationCancelled as exc:
            outcome = "cancelled"
            self.status.value = message_html(f"{exc}; nothing kept for {where}, click it again to generate",
                                              MUTED_STYLE)
            return None
        except Exception as exc:  # noqa: BLE001 - shown in the widget, never raised into the kernel
            self.last_error = error_text(exc)
            self.status.value = message_html(f"generating {where} failed", ERROR_STYLE)
            self.error.value = (f'<pre style="white-space:pre-wrap;{ERROR_STYLE};margin:0">'
                                f"{html.escape(self.last_error)}</pre>")
            return None
        finally:
            self.runner.end(outcome)
        self.views[key] = view
        self._mark_measured(view)
        self._display(view, cached=False)
        return view

    def _mark_measured(self, view: CellView) -> None:
        button = self.buttons.get((view.layer, view.step))
        if button is None:
            return
        measured = view.fidelity["final_latent_rel_l2"]
        button.description = _number(measured)
        self._colour(button, measured)
        button.style.font_weight = "bold"  # bold: generated here, a click shows it again at once
        button.tooltip = (f"{view.layer} at step {view.step}: final-latent rel-L2 {measured:.3g} measured here, "
                          f"PSNR {view.fidelity['psnr']:.1f} dB; click to show it again")

    def _display(self, view: CellView, *, cached: bool) -> None:
        self._fill("good", f"<b>all good</b> <code>{html.escape(self.drift.good)}</code><br>"
                           f"<span style='{MUTED_STYLE}'>the reference</span>", self.good_run)
        self._fill("cell", f"<b>only {html.escape(view.layer.removesuffix('.attn'))} at step {view.step} bad</b><br>"
                           f"{_numbers(view.fidelity)}", view.run)
        self._fill("bad", f"<b>all bad</b> <code>{html.escape(self.drift.bad)}</code><br>"
                          f"{_numbers(self.bad_fidelity)}", self.bad_run)
        scored = float(self.drift.grid[self.drift.layers.index(view.layer), view.step])
        map_note = "" if math.isnan(scored) else f"; locate_drift scored it {scored:.3g}"
        self.status.value = message_html(
            f"{view.layer} at step {view.step}: final-latent rel-L2 {view.fidelity['final_latent_rel_l2']:.3g} "
            f"vs all good{map_note}" + ("; shown from the cache, nothing generated" if cached else
                                       f"; {self.generations} generation(s) so far"), OK_STYLE)

    def _fill(self, key: str, caption: str, run) -> None:
        _, label, image = self.cards[key]
        label.value = f"<span style='font-size:90%'>{caption}</span>"
        image.value = png_bytes(run.image)
        image.layout.display = None


def _numbers(numbers: dict) -> str:
    psnr = numbers["psnr"]
    psnr_text = "inf (identical)" if math.isinf(psnr) else "-" if math.isnan(psnr) else f"{psnr:.1f} dB"
    return (f"<span style='font-size:90%'>latent rel-L2 {numbers['final_latent_rel_l2']:.3g}, "
            f"PSNR {psnr_text}</span>")
