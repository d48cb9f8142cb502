"""What the notebooks load and generate with, per model: device, dtype, image size, steps, prompt, reference."""

from __future__ import annotations

import dataclasses

PROMPT = "a red circle at the top left on a blue background"
# Offline models built or shipped with fluxlab run on the CPU in seconds; anything else is a local folder or a hub
# id with real weights, loaded in bfloat16 onto the GPU.
OFFLINE_MODELS = {
    "tiny": dict(height=64, width=64, steps=4),  # random weights: noise, but every code path of FLUX.2
    "embedded": dict(height=64, width=64, steps=8),  # trained in this repository on procedural scenes
}
REAL_WEIGHTS = dict(height=1024, width=1024, steps=28)  # FLUX.2 [dev]'s usual size; Klein: steps=4 is enough


@dataclasses.dataclass(frozen=True)
class NotebookSettings:
    model: str
    height: int
    width: int
    steps: int
    prompt: str = PROMPT
    variant: str | None = None  # "dev" / "klein" for "tiny"; read from the model folder otherwise
    small: bool = True  # an offline model on the CPU: compare every backend, float64 as the image reference

    @property
    def device(self) -> str | None:
        """None for a small model (it stays on the CPU it was built on); else the GPU where there is one."""
        import torch

        return None if self.small else "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def dtype(self):
        import torch

        return None if self.small else torch.bfloat16

    @property
    def image_reference(self) -> str:
        """The backend images are compared against: exact float64 on small models, the default pick otherwise."""
        from ..dispatch import default_backend

        return "reference" if self.small else default_backend() or "sdpa"

    def load_kwargs(self) -> dict:
        """Keyword arguments of ``fluxlab.load_flux2(MODEL, ...)``; real weights get ``offload="auto"`` (decided from
        the free GPU memory and the model's size at this image size, before loading)."""
        kwargs = {"device": self.device, "dtype": self.dtype}
        if not self.small:
            kwargs.update(offload="auto", height=self.height, width=self.width)
        if self.variant is not None:
            kwargs["flux2_variant"] = self.variant
        return kwargs

    def generation(self) -> dict:
        """Keyword arguments of the widgets and ``fluxlab.compare_images`` (less backends and seed)."""
        return {"prompt": self.prompt, "height": self.height, "width": self.width, "steps": self.steps}

    def pipe_kwargs(self) -> dict:
        """Keyword arguments of a diffusers pipeline call (less the generator)."""
        return {"prompt": self.prompt, "height": self.height, "width": self.width, "num_inference_steps": self.steps}


def settings_for(model: str, variant: str | None = "dev", force: bool = False, **overrides) -> NotebookSettings:
    """Settings for ``MODEL`` as set in a notebook's first cell; keyword arguments override any field.

    ``variant`` applies to ``"tiny"`` only (a folder or hub id says which pipeline it is). A size or step count
    beyond ``fluxlab.models.limits.BOUNDS`` is refused unless ``force=True``; malformed ones always.
    """
    from ..models.limits import check_generation, size_multiple_for

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"MODEL must be 'tiny', 'embedded', a local folder or a hub id; got {model!r}")
    small = model in OFFLINE_MODELS
    values = dict(model=model, small=small, variant=variant if model == "tiny" else None,
                  **(OFFLINE_MODELS[model] if small else REAL_WEIGHTS))
    values.update(overrides)
    check_generation(width=values["width"], height=values["height"], steps=values["steps"], seed=0, force=force,
                     multiple=size_multiple_for(model))
    return NotebookSettings(**values)
