"""``BackendToggleDemo``: a live FLUX.2 pipeline, a backend picker and generation controls; image and timing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..defaults import DEFAULT_PROMPT
from ..models.attach import set_backend
from ..models.runner import Measure, attached_state, device_of, run, warm_up
from ..results import html_table
from ._common import (OK_STYLE, Panel, RunControls, call_with, check_prompt, check_seed, check_size,
                      check_steps, hbox_with_message, int_box, label, message_html, png_bytes, tagged, widgets)
from .picker import BackendPicker


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
    return [dataclasses.replace(s, available=False, default=False, reasons=(
        "outside this FLUX.2 model's allowed set; widen it with fluxlab.attach(pipe, "
        f"allowed=fluxlab.models.FLUX2_BACKENDS | {{'{s.name}'}})",)) if s.available and s.name not in state.allowed
            else s for s in statuses]


def model_backends(pipe, exclude=()) -> list[str]:
    """Names of the backends that can run ``pipe``'s attention here (available, and in its allowed set)."""
    return [s.name for s in model_statuses(pipe) if s.available and s.name not in set(exclude)]


class BackendToggleDemo(Panel):
    """Generate with ``pipe`` on the picked backend; clicking another backend generates again. Shows the image,
    which backend served how many attention calls, the time and a history of runs (docs/notebooks.md)."""

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

        self.picker = BackendPicker(model_statuses(pipe, statuses), include=backends, description="attention backend")
        self.prompt = tagged(widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="420px")),
                             "fluxlab-prompt")  # the fluxlab-* classes: stable hooks for browser tests
        for name, value in (("seed", seed), ("steps", steps), ("height", height), ("width", width)):
            setattr(self, name, tagged(int_box(value, name, "180px"), f"fluxlab-{name}"))
        prompt_row, self.prompt_message = hbox_with_message(self.prompt)
        seed_row, self.seed_message = hbox_with_message(self.seed)
        steps_row, self.steps_message = hbox_with_message(self.steps)
        self.size_message = label("fluxlab-message", "fluxlab-size-message", margin="0 0 0 8px")

        self.button = tagged(widgets.Button(description="Generate", button_style="primary", icon="play"),
                             "fluxlab-generate")
        self.status = self.result = label("fluxlab-result", value=message_html("not run yet"))
        self.error = label("fluxlab-error")
        self.image = tagged(widgets.Image(format="png", layout=widgets.Layout(width=f"{image_width}px")),
                            "fluxlab-image")
        self.table = widgets.HTML("")

        self.button.on_click(lambda _: self.runner.launch(self.run))
        self.picker.on_change(lambda _: self.runner.launch(self.run) if self.auto_run else None)
        super().__init__([self.picker, prompt_row, widgets.HBox([seed_row, steps_row]),
                          widgets.HBox([self.height, self.width, self.size_message]),
                          widgets.HBox([self.button, self.result]), self.runner.box, self.error,
                          widgets.HBox([self.image, self.table])])
        self.add_class("fluxlab-toggle-demo")
        if run_on_start and self.picker.value is not None:
            self.run()

    @property
    def backend(self) -> str | None:
        return self.picker.value

    def check(self) -> bool:
        """Show a message next to every invalid control; True when all are valid."""
        return self.checked({
            self.prompt_message: check_prompt(self.prompt.value),
            self.seed_message: check_seed(self.seed.value),
            self.steps_message: check_steps(self.steps.value),
            self.size_message: check_size(self.height.value, self.width.value, self.pipe),
        })

    def run(self):
        """Generate once with the current settings; returns the image, or None (the reason is shown)."""
        self.error.value = ""
        if not self.check():
            return self.refuse()
        backend = self.backend
        if backend is None:
            return self.refuse("pick a backend: none can run here")
        settings = dict(prompt=self.prompt.value, seed=self.seed.value, steps=self.steps.value,
                        height=self.height.value, width=self.width.value)
        measure, warmed = Measure(self.pipe, calls=True), []  # which backend served how many calls

        def generate():
            self.runner.control.start(settings["steps"])
            warmed.append(self._warm_up(backend, settings))
            self.say(f"running on {backend} ...")
            with measure:
                image = self._call(backend, settings, self.runner.control)
            self.runner.control.check()
            self.image.value = png_bytes(image)
            return image

        image = self.attempt(generate, lambda: f"{backend} failed after {measure.total_s * 1e3:.0f} ms",
                             lambda exc: f"{backend} {exc} ({measure.total_s * 1e3:.0f} ms); the last image stays")
        if self.outcome == "busy":
            return None
        ms, ran, peak = measure.total_s * 1e3, measure.calls, measure.peak
        self.history.append({"backend": backend, "ms": ms, "ok": image is not None, **settings, **(
            {"ran": ran, "peak_memory_bytes": peak.bytes} if image is not None else
            {"cancelled": True} if self.outcome == "cancelled" else {})})
        if image is not None:
            served = ", ".join(f"{name}: {calls} attention calls" for name, calls in (ran or {}).items())
            self.say(f"ran on {backend}: {ms:.1f} ms ({settings['width']}x{settings['height']}, {settings['steps']} "
                     f"steps, seed {settings['seed']}; run {len(self.history)})" + (f" [{served}]" if served else "")
                     + f"; {peak.label}" + (f"; {warmed[0]}" if warmed[0] else ""), OK_STYLE)
        self.table.value = html_table(
            [{"run": len(self.history) - i, "backend": h["backend"], "ms": f"{h['ms']:.1f}",
              "result": "ok" if h["ok"] else "failed"} for i, h in enumerate(reversed(self.history[-8:]))])
        return image

    def _call(self, backend: str, settings: dict, control):
        """The generate function, given the step control when it takes one (a user's may not)."""
        return call_with(self._generate, self.pipe, backend, **settings, optional={"control": control})

    def _warm_up(self, backend: str, settings: dict) -> str:
        """One 1-step generation first if ``backend`` compiles on first use and is not warm at this size; the label
        the timing then carries ("" when nothing needed warming)."""
        from ..models.progress import jit_reason, to_warm

        device = device_of(self.pipe)
        if not to_warm([backend], device, self.warmup):
            return ""

        def announce(name):
            self.say(f"warming up {name} before timing (1 step; {jit_reason(name, device) or 'asked for'}) ...")

        return warm_up(self.pipe, {backend: (backend, backend)},
                       lambda _: self._call(backend, {**settings, "steps": 1}, None), self.warmup,
                       settings["height"], settings["width"], announce=announce)[0]
