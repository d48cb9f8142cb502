"""Result files of the decide tools, written atomically (temporary file beside, then rename): never half a file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..errors import FluxlabError
from ..util import atomic_write


class ResultFileError(FluxlabError, OSError):
    """A result file cannot be written where asked; the message names that path (not a temporary file)."""


def write_atomic(path, data: bytes | str) -> Path:
    """``fluxlab.util.atomic_write`` (the umask's mode, 0644 under 022), creating the folder if missing; ``~`` is
    the home folder. Failures name ``path`` and the reason (``ResultFileError``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ResultFileError(f"cannot write {path}: it is a folder; pass a file name, e.g. {path / 'plan.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, data)
    except OSError as exc:
        raise ResultFileError(f"cannot write {path}: {exc.strerror or exc}; pass a path in a folder you can write "
                              "to") from None


def write_json(path, payload: dict) -> Path:
    return write_atomic(path, json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")


def write_figure(path, figure) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())
