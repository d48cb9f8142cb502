"""``ImageGallery``: one image per backend from the same noise, side by side, with difference maps and metrics."""

from __future__ import annotations

import html
from collections.abc import Callable

from ..compare.plots import plot_latent_drift
from ..defaults import DEFAULT_PROMPT
from ..models.offload import gib
from ..results import format_cell, html_table
from ._common import (ERROR_STYLE, MUTED_STYLE, OK_STYLE, Panel, RunControls, call_with, check_prompt, check_seed,
                      check_size, check_steps, figure_png, hbox_with_message, int_box, label, message_html, png_bytes,
                      tagged, widgets)
from .picker import BackendPicker


def difference(image, reference):
    """|image - reference| averaged over colour channels, in float64."""
    import numpy as np

    diff = np.abs(np.asarray(image, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return diff.mean(axis=-1) if diff.ndim == 3 else diff


def difference_png(diff, vmax: float) -> bytes:
    """A ``difference`` map as an inferno heat map scaled to ``vmax``."""
    import numpy as np
    from matplotlib import colormaps

    return png_bytes(colormaps["inferno"](np.clip(diff / max(vmax, 1e-12), 0.0, 1.0))[..., :3])


def drift_figure(comparison):
    """Latent drift per denoising step (relative L2 vs the reference backend's latents), log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 2.6), layout="constrained")
    plot_latent_drift(fig.add_subplot(), comparison)
    return fig


class ImageGallery(Panel):
    """Generate with ``pipe`` on every picked backend from identical noise (``compare_images``, or ``compare=``) and
    show the images side by side with difference maps, metrics and the latent drift (docs/notebooks.md).
    ``comparison``: an ``ImageComparison`` already made (e.g. by ``compare_images`` in a cell above) to show first,
    without generating again; ``run_on_start``: generate at once instead."""

    def __init__(self, pipe, *, backends=None, reference: str | None = None, statuses=None,
                 prompt: str = DEFAULT_PROMPT, seed: int = 0, steps: int = 4,
                 height: int = 64, width: int = 64, run_on_start: bool = False, compare: Callable | None = None,
                 image_width: int = 192, warmup="auto", threaded: bool | None = None, comparison=None):
        self.pipe = pipe
        self.warmup = warmup  # compare_images' warm-up of backends that compile on first use
        self.runner = RunControls(threaded)
        self._compare_override = compare
        self.comparison = None
        self.image_width = image_width
        self.picker = BackendPicker(statuses, multiple=True, description="backends")
        self.picker.value = tuple(backends) if backends is not None else tuple(self.picker.available)
        picker_row, self.picker_message = hbox_with_message(self.picker)
        self.reference = widgets.Dropdown(description="reference", layout=widgets.Layout(width="260px"))
        self._reference_wanted = reference
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="420px"))
        self.seed, self.steps, self.height, self.width = (int_box(value, name) for name, value in (
            ("seed", seed), ("steps", steps), ("height", height), ("width", width)))
        prompt_row, self.prompt_message = hbox_with_message(self.prompt)
        self.settings_message = label("fluxlab-message")
        self.button = tagged(widgets.Button(description="Generate all", button_style="primary", icon="th"),
                             "fluxlab-generate")
        self.status = label("fluxlab-result", value=message_html("not run yet"))
        self.cards = tagged(widgets.HBox(layout=widgets.Layout(flex_flow="row wrap")), "fluxlab-gallery")
        self.drift = widgets.Image(format="png", layout=widgets.Layout(max_width="640px", display="none"))
        self.table = label("fluxlab-metrics")

        self._update_reference_options()
        self.picker.on_change(lambda _: self._update_reference_options())
        self.button.on_click(lambda _: self.runner.launch(self.run))
        super().__init__([picker_row, self.reference, prompt_row,
                          widgets.HBox([self.seed, self.steps, self.height, self.width, self.settings_message]),
                          widgets.HBox([self.button, self.status]), self.runner.box, self.cards, self.table,
                          self.drift])
        self.add_class("fluxlab-image-gallery")
        if comparison is not None and run_on_start:
            raise ValueError("ImageGallery: pass comparison= (show it) or run_on_start=True (generate), not both")
        if comparison is not None:
            self.comparison = comparison
            self.show(comparison)
        elif run_on_start:
            self.run()

    def _update_reference_options(self):
        options = list(self.picker.value or ())
        wanted = self._reference_wanted if self._reference_wanted in options else self.reference.value
        self.reference.options = options
        if options:
            self.reference.value = wanted if wanted in options else options[0]

    def check(self) -> bool:
        return self.checked({
            self.picker_message: None if self.picker.value else "pick at least one backend",
            self.prompt_message: check_prompt(self.prompt.value),
            self.settings_message: (check_seed(self.seed.value) or check_steps(self.steps.value)
                                    or check_size(self.height.value, self.width.value, self.pipe)),
        })

    def run(self):
        """Generate on every picked backend and show the gallery; returns the comparison, or None."""
        if not self.check():
            return self.refuse()
        from ..compare import compare_images

        self._reference_wanted = reference = self.reference.value
        backends = [reference] + [b for b in self.picker.value if b != reference]  # the reference's card first
        self.say(f"generating on {', '.join(backends)} ...")
        comparison = self.attempt(lambda: call_with(
            self._compare_override or compare_images, self.pipe, backends, prompt=self.prompt.value,
            seed=self.seed.value, steps=self.steps.value, height=self.height.value, width=self.width.value,
            reference=reference, optional={"control": self.runner.control, "warmup": self.warmup}),
            lambda: "generation failed", lambda exc: f"{exc}; the last gallery stays")
        if comparison is not None:
            self.comparison = comparison
            self.show(comparison)
        return comparison

    def show(self, comparison) -> None:
        ref_image = comparison.images.get(comparison.reference)
        diffs = ({name: difference(image, ref_image) for name, image in comparison.images.items()}
                 if ref_image is not None else {})
        vmax = max([float(d.max()) for d in diffs.values()] + [1e-6])
        self.cards.children = [self._card(row, comparison, diffs, vmax) for row in comparison.rows]
        self.table.value = html_table([
            {"backend": r.backend + (" (reference)" if r.backend == comparison.reference else ""),
             "PSNR dB": format_cell(r.psnr, ".2f"), "SSIM": format_cell(r.ssim, ".5f"),
             "max |pixel|": format_cell(r.max_abs_pixel, ".3g"),
             "final latent rel-L2": format_cell(r.final_latent_rel_l2, ".3g"),
             "time ms": format_cell(r.time_s * 1e3 if r.time_s is not None else None, ".1f"), "error": r.error}
            for r in comparison.rows])
        self.drift.value = figure_png(drift_figure(comparison))
        self.drift.layout.display = None
        failed = [r.backend for r in comparison.rows if r.error]
        notes = "; ".join(f"{name}: {comparison.settings[key]}" for name, key in
                          (("times", "warm_up"), ("peak GPU memory", "peak_memory")) if comparison.settings.get(key))
        self.say(f"{len(comparison.rows) - len(failed)} image(s) vs {comparison.reference}"
                 + (f"; failed: {', '.join(failed)}" if failed else "") + (f" ({notes})" if notes else ""),
                 ERROR_STYLE if failed else OK_STYLE)

    def _card(self, row, comparison, diffs, vmax) -> widgets.VBox:
        """One backend's card: its name, time and metrics, image and difference map (or its error)."""
        size = widgets.Layout(width=f"{self.image_width}px")
        title = f"<b><code>{html.escape(row.backend)}</code></b>"
        if row.error:
            body = [widgets.HTML(f'{title}<br><span style="{ERROR_STYLE};font-size:85%">'
                                 f"{html.escape(row.error)}</span>", layout=size)]
        else:
            peak = getattr(row, "peak_memory_bytes", None)
            timing = (f"{row.time_s * 1e3:.0f} ms" if row.time_s is not None else "") + (
                f", peak {gib(peak)}" if peak is not None else "")
            metrics = ("reference" if row.backend == comparison.reference else
                       f"PSNR {format_cell(row.psnr, '.1f')} dB, SSIM {format_cell(row.ssim, '.4f')}")
            body = [widgets.HTML(f"{title} <span style='{MUTED_STYLE}'>{timing}</span><br>"
                                 f"<span style='font-size:85%'>{metrics}</span>"),
                    widgets.Image(value=png_bytes(comparison.images[row.backend]), format="png", layout=size),
                    widgets.Image(value=difference_png(diffs[row.backend], vmax), format="png", layout=size),
                    widgets.HTML(f"<span style='font-size:80%;{MUTED_STYLE}'>|diff| max "
                                 f"{float(diffs[row.backend].max()):.3g} (scale 0-{vmax:.3g})</span>")]
        return tagged(widgets.VBox(body, layout=widgets.Layout(margin="4px 10px 4px 0")), "fluxlab-gallery-card")
