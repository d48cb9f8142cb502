"""What the decide tools share: result files written atomically (never half a file), figures, progress bars and
count checks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..errors import ResultFileError  # noqa: F401  (raised by write_atomic; importable from here as before)
from ..util import write_result_file as write_atomic
from .runs import DecideInputError


def write_json(path, payload: dict) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")


def write_figure(path, figure) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())


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
        figure.savefig(path, dpi=110)
    return figure


def progress_bar(enabled: bool, desc: str, unit: str = "gen", total: int | None = None):
    """A bar on a terminal or in a notebook, log lines in pipes, nothing when not ``enabled``."""
    from ..terminal import progress_bar as bar

    return bar(total=total, desc=desc, unit=unit, leave=False, disable=not enabled)


def check_count(value, message: str, minimum: int = 1) -> None:
    """Refuse ``value`` with ``message`` unless it is a whole number of at least ``minimum``."""
    if not isinstance(value, int) or value < minimum:
        raise DecideInputError(message)
