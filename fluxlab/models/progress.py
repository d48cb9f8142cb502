"""Progress, cancel and warm-up for generations: one diffusers step callback that counts steps, tells listeners (a
notebook progress bar) and stops the pipeline between two steps once cancelled; which backends compile on first use,
and the one warm-up per (model, backend, size) that keeps compiling out of timings."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ..errors import GenerationCancelled  # noqa: F401 (importable here)

# Backend -> what compiles on its first call. flex is compiled on GPUs only (on the CPU it runs eagerly).
JIT_BACKENDS = {
    "fa4": "FlashAttention-4 compiles its CuTe DSL kernel",
    "flex": "torch.compile builds flex_attention's Triton kernel",
    "sage": "SageAttention compiles its Triton kernels",
    "aiter_triton": "aiter compiles its Triton kernels",
    "aiter_sage": "aiter compiles its Triton kernels",
}
_WARM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transformer -> {(backend, device, size, text)}


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


# -- warm-ups: 1 denoising step at the size that will be timed (JIT kernels specialise on shapes: a smaller warm-up
# would leave e.g. flex to compile again inside the timed run), once per (model, backend, size) and process.


def jit_reason(backend: str, device) -> str | None:
    """Why ``backend`` compiles on its first call on ``device``, or None (nothing to warm up: e.g. every backend on
    the CPU, where flex runs eagerly)."""
    if torch.device(device if device is not None else "cpu").type == "cpu":
        return None
    return JIT_BACKENDS.get(backend.split(":", 1)[0])


def to_warm(backends, device, requested="auto") -> list[str]:
    """The backends to warm up: ``"auto"`` the JIT ones on ``device``; True all; False none; or the names given."""
    if requested == "auto":
        return [b for b in backends if jit_reason(b, device)]
    wanted = set(backends) if requested is True else set(requested or ())
    return [b for b in backends if b in wanted]


def is_warm(transformer, backend: str, device, height: int, width: int, text_tokens=None) -> bool:
    return (backend, str(device), int(height), int(width), text_tokens) in _WARM.get(transformer, set())


def mark_warm(transformer, backend: str, device, height: int, width: int, text_tokens=None) -> None:
    _WARM.setdefault(transformer, set()).add((backend, str(device), int(height), int(width), text_tokens))


def warmup_note(warmed: dict[str, float], already: list[str], height: int, width: int) -> str:
    """The label a timing carries, e.g. "fa4, flex: warmed up once (1 step at 1024x1024, 41.2 s) before timing"."""
    parts = []
    if warmed:
        parts.append(f"{', '.join(warmed)}: warmed up once (1 step at {width}x{height}, "
                     f"{sum(warmed.values()):.1f} s) before timing")
    if already:
        parts.append(f"{', '.join(already)}: already warm in this process")
    return "; ".join(parts) or "no warm-up needed (no backend here compiles on first use)"
