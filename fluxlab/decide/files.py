"""Result files of the decide tools, written atomically (temporary file beside, then rename): never half a file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..errors import ResultFileError  # noqa: F401  (raised by write_atomic; importable from here as before)
from ..util import write_result_file as write_atomic


def write_json(path, payload: dict) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")


def write_figure(path, figure) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())
