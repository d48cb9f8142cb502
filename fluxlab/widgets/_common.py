"""Shared pieces of the widgets: error text, PNG encoding, input checks and small HTML labels."""

from __future__ import annotations

import html
import io

try:
    import ipywidgets as widgets
except ImportError as exc:  # pragma: no cover - the notebooks extra installs it
    raise ImportError("fluxlab.widgets needs ipywidgets 8 and matplotlib: pip install 'fluxlab[notebooks]'") from exc

ERROR_STYLE = "color:#b71c1c"
OK_STYLE = "color:#1b5e20"
MUTED_STYLE = "color:#616161"

# FLUX.2 packs 2x2 latent patches of an 8x VAE: image sides must be multiples of 16.
SIZE_MULTIPLE = 16
MAX_SIDE = 4096
MAX_STEPS = 1000


def error_text(exc: BaseException, limit: int = 600) -> str:
    """One line a user can read: the exception type and message, shortened."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def message_html(text: str, style: str = MUTED_STYLE) -> str:
    return f'<span style="{style}">{html.escape(text)}</span>' if text else ""


def set_message(label: widgets.HTML, text: str = "", style: str = ERROR_STYLE) -> None:
    label.value = message_html(text, style)


def run_shown(panel, status: widgets.HTML, action: str, fn):
    """Run ``fn()`` with ``panel.button`` disabled; a failure is shown in ``status`` ("<action> failed: ...")
    and kept in ``panel.last_error``, never raised into the kernel. Returns ``fn()``'s result, or None."""
    panel.last_error = None
    panel.button.disabled = True
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - shown in the panel, never raised into the kernel
        panel.last_error = error_text(exc)
        status.value = message_html(f"{action} failed: {panel.last_error}", ERROR_STYLE)
        return None
    finally:
        panel.button.disabled = False


def png_bytes(image) -> bytes:
    """PNG bytes of a PIL image, a float array in [0, 1] (H, W, 3) or a uint8 array."""
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(fig, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def check_prompt(prompt) -> str | None:
    """Why ``prompt`` cannot be generated from, or None."""
    if not isinstance(prompt, str) or not prompt.strip():
        return "enter a prompt (it is empty)"
    return None


def check_side(value, name: str) -> str | None:
    """Why an image side cannot be used by FLUX.2, or None."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{name} must be a whole number of pixels"
    if value < SIZE_MULTIPLE or value > MAX_SIDE:
        return f"{name} must be between {SIZE_MULTIPLE} and {MAX_SIDE} pixels (got {value})"
    if value % SIZE_MULTIPLE:
        lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
        return (f"{name} must be a multiple of {SIZE_MULTIPLE} (FLUX.2 packs 2x2 patches of an 8x VAE latent); "
                f"got {value}, try {max(lower, SIZE_MULTIPLE)} or {lower + SIZE_MULTIPLE}")
    return None


def check_steps(value) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_STEPS:
        return f"steps must be a whole number from 1 to {MAX_STEPS} (got {value!r})"
    return None


def check_seed(value) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        return f"seed must be a whole number from 0 to 2**63 - 1 (got {value!r})"
    return None


def hbox_with_message(control: widgets.Widget) -> tuple[widgets.HBox, widgets.HTML]:
    """``control`` with an (initially empty) message label next to it."""
    label = widgets.HTML("", layout=widgets.Layout(margin="0 0 0 8px"))
    label.add_class("fluxlab-message")
    return widgets.HBox([control, label]), label
