"""What the notebooks generate with, per model: image size, steps, prompt and the backends worth comparing."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NotebookSettings:
    model: str
    height: int
    width: int
    steps: int
    prompt: str
    small: bool  # runs on CPU in seconds: the notebooks compare every available backend

    def generation(self) -> dict:
        """The keyword arguments of a pipeline call (and of ``compare_images``), less the seed."""
        return {"prompt": self.prompt, "height": self.height, "width": self.width, "steps": self.steps}


PROMPT = "a red circle at the top left on a blue background"
# Offline models built or shipped with fluxlab; anything else is a local folder or hub id with real weights.
OFFLINE_MODELS = {
    "tiny": dict(height=64, width=64, steps=4),  # random weights: noise, but every code path of FLUX.2
    "embedded": dict(height=64, width=64, steps=8),  # trained in this repository on procedural scenes
}
REAL_WEIGHTS = dict(height=1024, width=1024, steps=28)  # FLUX.2 [dev]'s usual size; Klein: steps=4 works too


def settings_for(model: str, **overrides) -> NotebookSettings:
    """Settings for ``MODEL`` as set in a notebook's first cell; keyword arguments override any field."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"MODEL must be 'tiny', 'embedded', a local folder or a hub id; got {model!r}")
    base = OFFLINE_MODELS.get(model, REAL_WEIGHTS)
    values = dict(model=model, prompt=PROMPT, small=model in OFFLINE_MODELS, **base)
    values.update(overrides)
    return NotebookSettings(**values)
