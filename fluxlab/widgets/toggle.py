"""``BackendToggleDemo``: a live FLUX.2 pipeline, a backend picker and generation controls; image and timing."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable

from ..defaults import DEFAULT_PROMPT
from ._common import (ERROR_STYLE, MUTED_STYLE, OK_STYLE, check_prompt, check_seed, check_size, check_steps,
                      error_text, hbox_with_message, message_html, png_bytes, set_message, widgets)
from ..models.attach import set_backend
from ..models.runner import Measure, attached_state, device_of, run, warm_up
from .picker import BackendPicker
from .running import RunControls


def generate_image(pipe, backend: str, *, prompt: str, seed: int, steps: int, height: int, width: int,
                   control=None):
    """One image from ``pipe`` with every attention call on ``backend``; the noise depends on ``seed`` only.

    A pipeline with fluxlab attached gets ``backend`` as its own (``fluxlab.set_backend``: it stays after this
    call); any pipeline runs inside ``fluxlab.use_backend``. A backend that cannot run is refused with its
    reasons, never replaced. ``control``: a ``StepControl`` that sees each step and can stop between steps.
    """
    if attached_state(pipe) is not None:
        set_backend(pipe, backend)
    return run(pipe, backend=backend, prompt=prompt, seed=seed, steps=steps, height=height, width=width,
               output="pil", control=control, partial=True).image


def model_statuses(pipe, statuses=None) -> list:
    """``fluxlab.backends()`` with the backends outside an attached model's allowed set marked unavailable."""
    if statuses is None:
        from ..doctor import backends

        statuses = backends()
    state = attached_state(pipe)
    if state is None:
        return list(statuses)
    out = []
    for status in statuses:
        if status.available and status.name not in state.allowed:
            reason = ("outside this FLUX.2 model's allowed set; widen it with fluxlab.attach(pipe, "
                      f"allowed=fluxlab.models.FLUX2_BACKENDS | {{'{status.name}'}})")
            status = dataclasses.replace(status, available=False, reasons=(reason,), default=False)
        out.append(status)
    return out


def model_backends(pipe, exclude=()) -> list[str]:
    """Names of the backends that can run ``pipe``'s attention here (available, and in its allowed set)."""
    return [s.name for s in model_statuses(pipe) if s.available and s.name not in set(exclude)]


class BackendToggleDemo(widgets.VBox):
    """Generate with ``pipe`` on the picked backend; clicking another backend generates again.

    Shows the image, which backend ran and how long the generation took, and a history of runs. A backend that
    fails shows its error here (the kernel and the rest of the panel keep working); an invalid prompt, size,
    seed or step count shows a message next to its control and nothing is generated.

    ``generate(pipe, backend, prompt=, seed=, steps=, height=, width=)`` -> image replaces the default
    :func:`generate_image` (e.g. to add pipeline arguments). When fluxlab is attached to ``pipe`` (as
    ``fluxlab.load_flux2`` does), backends outside the model's allowed set are shown disabled, and every
    generation is watched with a shapes-only ``fluxlab.capture``: the label says which backend served how many
    attention calls, not only which one was asked for.
    """

    def __init__(self, pipe, *, prompt: str = DEFAULT_PROMPT, seed: int = 0, steps: int = 4,
                 height: int = 64, width: int = 64, backends=None, statuses=None, auto_run: bool = True,
                 run_on_start: bool = True, generate: Callable | None = None, image_width: int = 256,
                 warmup="auto", threaded: bool | None = None):
        self.pipe = pipe
        self.warmup = warmup  # as for compare_images: "auto" warms backends that compile on first use
        self.runner = RunControls(threaded)
        self._generate = generate or generate_image
        self.auto_run = auto_run
        self.history: list[dict] = []
        self.last_error: str | None = None

        self.picker = BackendPicker(model_statuses(pipe, statuses), include=backends, description="attention backend")
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="420px"))
        for name, value in (("seed", seed), ("steps", steps), ("height", height), ("width", width)):
            setattr(self, name, widgets.IntText(value=value, description=name, layout=widgets.Layout(width="180px")))
        for name in ("prompt", "seed", "steps", "height", "width"):
            getattr(self, name).add_class(f"fluxlab-{name}")  # stable hooks for browser tests
        prompt_row, self.prompt_message = hbox_with_message(self.prompt)
        seed_row, self.seed_message = hbox_with_message(self.seed)
        steps_row, self.steps_message = hbox_with_message(self.steps)
        self.size_message = widgets.HTML("", layout=widgets.Layout(margin="0 0 0 8px"))
        self.size_message.add_class("fluxlab-message")
        self.size_message.add_class("fluxlab-size-message")
        size_row = widgets.HBox([self.height, self.width, self.size_message])

        self.button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.button.add_class("fluxlab-generate")
        self.result = widgets.HTML(message_html("not run yet"))
        self.result.add_class("fluxlab-result")
        self.error = widgets.HTML("")
        self.error.add_class("fluxlab-error")
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{image_width}px"))
        self.image.add_class("fluxlab-image")
        self.table = widgets.HTML("")

        self.button.on_click(lambda _: self.runner.launch(self.run))
        self.picker.on_change(self._on_backend)
        super().__init__([self.picker, prompt_row, widgets.HBox([seed_row, steps_row]), size_row,
                          widgets.HBox([self.button, self.result]), self.runner.box, self.error,
                          widgets.HBox([self.image, self.table])])
        self.add_class("fluxlab-toggle-demo")
        if run_on_start and self.picker.value is not None:
            self.run()

    # --------------------------------------------------------------------------------------------- logic

    @property
    def backend(self) -> str | None:
        return self.picker.value

    def _on_backend(self, _value):
        if self.auto_run:
            self.runner.launch(self.run)

    def check(self) -> bool:
        """Show a message next to every invalid control; True when all are valid."""
        problems = {
            self.prompt_message: check_prompt(self.prompt.value),
            self.seed_message: check_seed(self.seed.value),
            self.steps_message: check_steps(self.steps.value),
            self.size_message: check_size(self.height.value, self.width.value, self.pipe),
        }
        for label, problem in problems.items():
            set_message(label, problem or "")
        return not any(problems.values())

    def run(self):
        """Generate once with the current settings; returns the image, or None (the reason is shown)."""
        self.error.value = ""
        if not self.check():
            self.result.value = message_html("fix the marked settings, then generate again", ERROR_STYLE)
            return None
        backend = self.backend
        if backend is None:
            self.result.value = message_html("pick a backend: none can run here", ERROR_STYLE)
            return None
        settings = dict(prompt=self.prompt.value, seed=self.seed.value, steps=self.steps.value,
                        height=self.height.value, width=self.width.value)
        if self.runner.busy:  # a click while a background run is going
            self.result.value = message_html("a generation is running: wait for it, or press Cancel", ERROR_STYLE)
            return None
        from ..models.progress import GenerationCancelled

        self.button.disabled = True
        self.runner.begin()
        self.runner.control.start(settings["steps"])
        outcome, measure = "failed", Measure(self.pipe, calls=True)  # which backend served how many calls
        try:
            warmed = self._warm_up(backend, settings)
            self.result.value = message_html(f"running on {backend} ...")
            with measure:
                image = self._call_generate(backend, settings, self.runner.control)
            self.runner.control.check()
            self.image.value = png_bytes(image)
            outcome = "success"
        except Exception as exc:  # noqa: BLE001 - a failing backend is shown, never raised into the kernel
            elapsed_ms, cancelled = measure.total_s * 1e3, isinstance(exc, GenerationCancelled)
            outcome, self.last_error = ("cancelled", None) if cancelled else ("failed", error_text(exc))
            self.history.append({"backend": backend, "ms": elapsed_ms, "ok": False, **settings,
                                 **({"cancelled": True} if cancelled else {})})
            if cancelled:
                self.result.value = message_html(f"{backend} {exc} ({elapsed_ms:.0f} ms); the last image stays",
                                                 MUTED_STYLE)
            else:
                self.result.value = message_html(f"{backend} failed after {elapsed_ms:.0f} ms", ERROR_STYLE)
                self.error.value = (f'<pre style="white-space:pre-wrap;{ERROR_STYLE};margin:0">'
                                    f"{html.escape(self.last_error)}</pre>")
            self._render_history()
            return None
        finally:
            self.button.disabled = False
            self.runner.end(outcome)
        elapsed_ms, ran, peak = measure.total_s * 1e3, measure.calls, measure.peak
        self.last_error = None
        self.history.append({"backend": backend, "ms": elapsed_ms, "ok": True, "ran": ran,
                             "peak_memory_bytes": peak.bytes, **settings})
        served = ""
        if ran:
            served = " [" + ", ".join(f"{name}: {calls} attention calls" for name, calls in ran.items()) + "]"
        self.result.value = message_html(
            f"ran on {backend}: {elapsed_ms:.1f} ms ({settings['width']}x{settings['height']}, "
            f"{settings['steps']} steps, seed {settings['seed']}; run {len(self.history)}){served}; {peak.label}"
            + (f"; {warmed}" if warmed else ""), OK_STYLE)
        self._render_history()
        return image

    def _call_generate(self, backend: str, settings: dict, control):
        """The generate function, given the step control when it takes one (a user's may not)."""
        import inspect

        try:
            params = inspect.signature(self._generate).parameters
        except (TypeError, ValueError):
            params = {}
        takes = "control" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        return self._generate(self.pipe, backend, **settings, **({"control": control} if takes else {}))

    def _warm_up(self, backend: str, settings: dict) -> str:
        """One 1-step generation first if ``backend`` compiles on first use and is not warm at this size; the label
        the timing then carries ("" when nothing needed warming)."""
        from ..models.progress import jit_reason, to_warm

        device = device_of(self.pipe)
        if not to_warm([backend], device, self.warmup):
            return ""

        def announce(name):
            why = jit_reason(name, device) or "asked for"
            self.result.value = message_html(f"warming up {name} before timing (1 step; {why}) ...")

        return warm_up(self.pipe, {backend: (backend, backend)},
                       lambda _: self._call_generate(backend, {**settings, "steps": 1}, None), self.warmup,
                       settings["height"], settings["width"], announce=announce)[0]

    def _render_history(self, last: int = 8):
        rows = "".join(
            f"<tr><td>{len(self.history) - i}</td><td><code>{html.escape(h['backend'])}</code></td>"
            f"<td style='text-align:right'>{h['ms']:.1f}</td><td>{'ok' if h['ok'] else 'failed'}</td></tr>"
            for i, h in enumerate(reversed(self.history[-last:])))
        self.table.value = (f'<table style="font-size:85%;margin-left:12px;{MUTED_STYLE}"><thead><tr><th>run</th>'
                            f"<th>backend</th><th>ms</th><th></th></tr></thead><tbody>{rows}</tbody></table>")
