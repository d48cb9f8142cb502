"""What the decide tools share: result files written atomically (never half a file), figures, progress bars and
count checks."""

from __future__ import annotations

import json
from pathlib import Path

from ..compare.plots import figure_png, save_figure
from ..errors import ResultFileError  # noqa: F401  (raised by write_atomic; importable from here as before)
from ..util import write_result_file as write_atomic
from .runs import DecideInputError


def write_json(path, payload: dict) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")


def write_figure(path, figure) -> Path:
    """``figure`` as a PNG file, written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    png = figure_png(figure, dpi=110)
    plt.close(figure)
    return write_atomic(path, png)


def new_figure(path, **subplots):
    """``plt.subplots(**subplots)``, on the file-only Agg backend when the figure goes to ``path``."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(**subplots)


def finish_figure(figure, path):
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path, dpi=110)
    return figure


def progress_bar(enabled: bool, desc: str, unit: str = "gen", total: int | None = None):
    """A bar on a terminal or in a notebook, log lines in pipes, nothing when not ``enabled``."""
    from ..terminal import progress_bar as bar

    return bar(total=total, desc=desc, unit=unit, leave=False, disable=not enabled)


def check_count(value, message: str, minimum: int = 1) -> None:
    """Refuse ``value`` with ``message`` unless it is a whole number of at least ``minimum``."""
    if not isinstance(value, int) or value < minimum:
        raise DecideInputError(message)
