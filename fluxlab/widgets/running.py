"""A generating widget's progress bar and Cancel button, and the background run that lets a Cancel click arrive."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable

from ..models.progress import StepControl
from ._common import tagged, widgets


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where a click handler must return for the next click (Cancel) to arrive."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class RunControls:
    """``progress`` (an IntProgress driven by the pipeline's step callback) and ``cancel_button`` (stops after the
    current denoising step), bound to one :class:`~fluxlab.models.progress.StepControl` (``control``).

    ``launch(fn)`` runs ``fn`` in a background thread inside a Jupyter kernel (``threaded=None``), else directly:
    a kernel handles one message at a time, so a generation run inside the click handler could never be cancelled.
    """

    def __init__(self, threaded: bool | None = None):
        self.control = StepControl()
        self.threaded = threaded
        self.busy = False
        self.progress = tagged(widgets.IntProgress(value=0, min=0, max=1, description="steps",
                                                   layout=widgets.Layout(width="300px")), "fluxlab-progress")
        self.cancel_button = tagged(widgets.Button(description="Cancel", icon="stop", disabled=True,
                                                   tooltip="stop after the current denoising step"), "fluxlab-cancel")
        self.cancel_button.on_click(lambda _: self.control.cancel())
        self.box = widgets.HBox([self.progress, self.cancel_button])
        self.control.listen(self._show)

    def _show(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, self.progress.max)
        self.progress.description = f"{done}/{total} steps"

    def begin(self) -> None:
        self.busy = True
        self.progress.bar_style = "info"
        self.cancel_button.disabled = False

    def end(self, outcome: str = "success") -> None:
        """``outcome``: "success", "cancelled" or "failed" (the bar's colour says which)."""
        self.busy = False
        self.cancel_button.disabled = True
        self.progress.bar_style = {"success": "success", "cancelled": "warning"}.get(outcome, "danger")

    def launch(self, fn: Callable[[], object]) -> None:
        threaded = in_kernel() if self.threaded is None else self.threaded
        if threaded:
            # The caller's context travels with the work: fluxlab.use_backend is context-local (dispatch.py).
            threading.Thread(target=contextvars.copy_context().run, args=(fn,), name="fluxlab-generate",
                             daemon=True).start()
        else:
            fn()
