"""``DriftExplorer``: a DriftMap's (layer x step) grid as buttons; a click shows the image with only that cell bad."""

from __future__ import annotations

import dataclasses
import html
import math

from ._common import (MUTED_STYLE, OK_STYLE, Panel, RunControls, figure_png, label, message_html, png_bytes, tagged,
                      widgets)

# Above this many cells the grid is drawn as the map's heatmap, and cells are picked with the two menus only.
MAX_CELL_BUTTONS = 600
UNSCORED_COLOUR = "#eeeeee"  # cells locate_drift never split down to
CARDS = ("good", "cell", "bad")


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
    return "inf" if math.isinf(value) else "0" if value == 0 else f"{value:.1e}"


def _numbers(numbers: dict) -> str:
    psnr = numbers["psnr"]
    psnr_text = "inf (identical)" if math.isinf(psnr) else "-" if math.isnan(psnr) else f"{psnr:.1f} dB"
    return (f"<span style='font-size:90%'>latent rel-L2 {numbers['final_latent_rel_l2']:.3g}, "
            f"PSNR {psnr_text}</span>")


def _tooltip(layer: str, step: int, value: float) -> str:
    if math.isnan(value):
        return f"{layer} at step {step}: not scored by locate_drift; click to generate it"
    return f"{layer} at step {step}: final-latent rel-L2 {value:.3g} with only this cell bad; click for its image"


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


class DriftExplorer(Panel):
    """Click a cell of ``drift_map`` (``fluxlab.locate_drift`` on ``pipe``): the image with ``bad`` in that layer at
    that step only, beside the all-good and all-bad images, with its rel-L2 and PSNR against all good. Nothing is
    generated until a click, and nothing twice (docs/notebooks.md)."""

    def __init__(self, pipe, drift_map, *, image_width: int = 160, threaded: bool | None = None,
                 max_buttons: int = MAX_CELL_BUTTONS):
        self.drift = drift_map
        self.replay = drift_map.replay(pipe)  # refuses a map without schedules or from another model, now
        self.runner = RunControls(threaded)
        self.views: dict[tuple[str, int], CellView] = {}
        self.good_run = self.bad_run = None  # the two end runs, generated with the first cell
        self.bad_fidelity: dict | None = None

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
        grid = self._grid(layers, steps) if len(layers) * steps <= max_buttons else tagged(widgets.Image(
            value=figure_png(drift_map.figure()), format="png", layout=widgets.Layout(max_width="900px")),
            "fluxlab-drift-grid")
        self.status = label("fluxlab-result", value=message_html("click a cell: nothing is generated until then"))
        self.error = label("fluxlab-error")
        self.cards = {key: self._card(image_width) for key in CARDS}
        intro = widgets.HTML(
            f"<b>good</b> <code>{html.escape(drift_map.good)}</code> &rarr; <b>bad</b> "
            f"<code>{html.escape(drift_map.bad)}</code>: a cell is one attention layer at one denoising step. "
            f"<span style='{MUTED_STYLE}'>Numbers: final-latent rel-L2 with only that cell bad (colour: share of the "
            f"strongest); \u00b7 = not scored by locate_drift.</span>")
        super().__init__([intro, grid, widgets.HBox([self.layer, self.step, self.button]), self.status,
                          self.runner.box, self.error, widgets.HBox([self.cards[k][0] for k in CARDS])])
        self.add_class("fluxlab-drift-explorer")

    def _grid(self, layers, steps) -> widgets.GridBox:
        import numpy as np

        finite = self.drift.grid[np.isfinite(self.drift.grid)]
        self._vmax = float(finite.max()) if finite.size else 0.0  # one colour scale: the strongest scored cell
        cells = [widgets.HTML("")] + [widgets.HTML(f"<b>step {s}</b>") for s in range(steps)]
        for row, layer in enumerate(layers):
            cells.append(widgets.HTML(f"<code>{html.escape(layer.removesuffix('.attn'))}</code>"))
            for step in range(steps):
                value = float(self.drift.grid[row, step])
                button = widgets.Button(description=_number(value), tooltip=_tooltip(layer, step, value),
                                        layout=widgets.Layout(width="auto", padding="0 2px"))
                button.style.font_size = "11px"
                button.style.button_color, button.style.text_color = cell_colours(value, self._vmax)
                tagged(button, "fluxlab-drift-cell", f"fluxlab-drift-cell-{row}-{step}")  # hooks for browser tests
                button.on_click(lambda _, layer=layer, step=step: self.click(layer, step))
                self.buttons[(layer, step)] = button
                cells.append(button)
        return tagged(widgets.GridBox(cells, layout=widgets.Layout(
            grid_template_columns=f"max-content repeat({steps}, 72px)", grid_gap="2px 2px", align_items="center")),
            "fluxlab-drift-grid")

    @staticmethod
    def _card(image_width: int) -> tuple[widgets.VBox, widgets.HTML, widgets.Image]:
        caption = widgets.HTML("")
        image = tagged(widgets.Image(format="png", layout=widgets.Layout(width=f"{image_width}px", display="none")),
                       "fluxlab-image")
        box = tagged(widgets.VBox([caption, image], layout=widgets.Layout(margin="4px 12px 4px 0")),
                     "fluxlab-drift-card")
        return box, caption, image

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
        key, where = (layer, step), f"{layer.removesuffix('.attn')} at step {step}"
        if key in self.views and not self.runner.busy:
            self.last_error, self.error.value = None, ""
            self._display(self.views[key], cached=True)
            return self.views[key]
        view = self.attempt(lambda: self._generate(layer, step, where), lambda: f"generating {where} failed",
                            lambda exc: f"{exc}; nothing kept for {where}, click it again to generate")
        if view is not None:
            self.views[key] = view
            self._mark_measured(view)
            self._display(view, cached=False)
        return view

    def _generate(self, layer: str, step: int, where: str) -> CellView:
        """The cell's run, and first the all-good and all-bad runs where they are not kept yet."""
        from ..decide.fidelity import fidelity

        cell, control = self.replay.cell(layer, step), self.runner.control
        todo = [name for name, run in (("all good", self.good_run), ("all bad", self.bad_run)) if run is None]
        control.start(self.drift.steps * (len(todo) + 1))
        self.say(f"generating {', '.join(todo + [f'only {where} bad'])} ...")
        if self.good_run is None:
            self.good_run = self.replay.run(None, control=control)
        if self.bad_run is None:
            self.bad_run = self.replay.run(self.replay.all_cells, control=control)
            self.bad_fidelity = fidelity(self.bad_run, self.good_run)
        run = self.replay.run(cell, control=control)
        return CellView(layer, step, run, fidelity(run, self.good_run))

    def _mark_measured(self, view: CellView) -> None:
        button = self.buttons.get((view.layer, view.step))
        if button is None:
            return
        measured = view.fidelity["final_latent_rel_l2"]
        button.description = _number(measured)
        button.style.button_color, button.style.text_color = cell_colours(measured, self._vmax)
        button.style.font_weight = "bold"  # bold: generated here, a click shows it again at once
        button.tooltip = (f"{view.layer} at step {view.step}: final-latent rel-L2 {measured:.3g} measured here, "
                          f"PSNR {view.fidelity['psnr']:.1f} dB; click to show it again")

    def _display(self, view: CellView, *, cached: bool) -> None:
        captions = {"good": f"<b>all good</b> <code>{html.escape(self.drift.good)}</code><br>"
                            f"<span style='{MUTED_STYLE}'>the reference</span>",
                    "cell": f"<b>only {html.escape(view.layer.removesuffix('.attn'))} at step {view.step} bad</b><br>"
                            f"{_numbers(view.fidelity)}",
                    "bad": f"<b>all bad</b> <code>{html.escape(self.drift.bad)}</code><br>"
                           f"{_numbers(self.bad_fidelity)}"}
        for key, run in zip(CARDS, (self.good_run, view.run, self.bad_run)):
            _, caption, image = self.cards[key]
            caption.value = f"<span style='font-size:90%'>{captions[key]}</span>"
            image.value = png_bytes(run.image)
            image.layout.display = None
        scored = float(self.drift.grid[self.drift.layers.index(view.layer), view.step])
        map_note = "" if math.isnan(scored) else f"; locate_drift scored it {scored:.3g}"
        self.say(f"{view.layer} at step {view.step}: final-latent rel-L2 {view.fidelity['final_latent_rel_l2']:.3g} "
                 f"vs all good{map_note}" + ("; shown from the cache, nothing generated" if cached else
                                            f"; {self.generations} generation(s) so far"), OK_STYLE)
