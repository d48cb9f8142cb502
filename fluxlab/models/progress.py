"""Progress and cancel for generations: one diffusers step callback that counts steps, tells listeners (a notebook
progress bar) and, once ``cancel()`` is called, stops the pipeline between two denoising steps."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import GenerationCancelled  # noqa: F401 (importable here)


class StepControl:
    """Shared by whoever runs a generation (``compare_images(control=...)``, the widgets) and whoever watches or
    stops it. ``start(total)`` before a run; ``callback()`` is the pipeline's ``callback_on_step_end``;
    ``listen(fn)`` calls ``fn(done, total)`` after every step; ``cancel()`` sets diffusers' ``pipe._interrupt``
    at the next step end (diffusers skips the remaining steps); ``check()`` then raises GenerationCancelled."""

    def __init__(self):
        self.done = 0
        self.total = 0
        self.cancel_requested = False
        self._listeners: list[Callable[[int, int], None]] = []

    def listen(self, fn: Callable[[int, int], None]) -> None:
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            fn(self.done, self.total)

    def start(self, total: int) -> None:
        self.done, self.total, self.cancel_requested = 0, int(total), False
        self._notify()

    def cancel(self) -> None:
        self.cancel_requested = True

    def callback(self, inner: Callable | None = None, *, count: bool = True):
        """A ``callback_on_step_end`` that runs ``inner`` (if any), counts the step (unless ``count`` is false, e.g.
        for a warm-up) and stops the pipeline once cancelled."""

        def on_step_end(pipe, step, timestep, tensors):
            out = inner(pipe, step, timestep, tensors) if inner is not None else {}
            if count:
                self.done += 1
                self._notify()
            if self.cancel_requested:
                pipe._interrupt = True  # diffusers' own stop: the loop skips the steps left
            return out if out is not None else {}

        return on_step_end

    def check(self) -> None:
        """Raise GenerationCancelled if ``cancel()`` was called (after the pipeline call returned)."""
        if self.cancel_requested:
            raise GenerationCancelled(f"cancelled after {self.done} of {self.total} steps")
