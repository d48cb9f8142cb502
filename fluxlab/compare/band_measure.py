"""Measuring an image band for a user's pipeline (``measure_image_band``) and finding the band that judges a
generation (``band_for``): given, committed for this setting, or measured here. The data and the rule live in
``fluxlab.compare.bands``."""

from __future__ import annotations

from . import bands as _bands
from .bands import CLASSES, DEFAULT_BAND_PROMPTS, ImageBand


def measure_image_band(pipe, *, prompts=DEFAULT_BAND_PROMPTS, seeds=(0, 1), steps: int = 4, height: int | None = 64,
                       width: int | None = 64, classes=CLASSES, keep_outputs: bool = False, card: str | None = None,
                       progress=None, **pipe_kwargs) -> ImageBand:
    """Measure the image band of ``pipe`` in this setting: at every prompt x seed, one generation per legitimate
    change (``fluxlab.compare.bands.VARIANTS``: float64, sdpa, sdpa_math and a rerun; aiter's RTNE and RTNA, bf16
    inputs/output, 64-key blocks), then every pair's final-latent rel-L2, 1 - SSIM and pixel RMSE within a class.
    ``classes``: which bands (4 generations a cell each). ``keep_outputs``: keep the float64 reference's final
    latents, so that a band measured on another card can be merged with this one (``merge_bands``); ``card``:
    its name there. Extra keyword arguments go to the pipeline call. ``save(path)`` writes it; pass it (or the
    path) as ``band=`` to ``compare_images``, ``image_verdict``, ``frontier`` or ``locate_drift``."""
    from .images import compare_images
    from .specs import BackendSpec

    classes = _bands.check_classes(classes)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
    if not prompts or not seeds:
        raise _bands.ImageBandError("measure_image_band needs at least one prompt and one seed")

    def outputs_of(prompt, seed, names):
        specs = [name.replace("#rerun", "") for name in names]
        result = compare_images(pipe, specs, prompt=prompt, seeds=[seed], steps=steps, height=height, width=width,
                                reference="reference", band=False, **pipe_kwargs)
        labels, seen = [], {}
        for spec in specs:  # compare_images' row labels: a repeated spec gets '#2'
            label = BackendSpec.parse(spec).label
            seen[label] = seen.get(label, 0) + 1
            labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
        rows = result.metrics
        return {name: (result.images[label], result.latents[label][-1]) if label in result.latents
                else (rows[label].error or "no image") for name, label in zip(names, labels)}

    setting = _bands.setting_of(pipe, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs)
    return _bands.band_from_outputs(outputs_of, setting=setting, prompts=prompts, seeds=seeds, classes=classes,
                             keep_outputs=keep_outputs, card=card, progress=progress)


def band_for(pipe, band, *, prompt: str, seeds, steps: int, height, width, pipe_kwargs: dict,
             classes=CLASSES) -> ImageBand:
    """The band that judges a generation of ``pipe``: ``band`` (an ImageBand or a path, checked against the
    setting), else the committed band of this setting, else one of ``classes`` measured here at ``prompt`` and
    ``seeds`` (4 more generations per seed and class)."""
    setting = _bands.setting_of(pipe, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs)
    found = _bands.resolve_band(band, setting)
    if found is not None:
        return found
    return measure_image_band(pipe, prompts=[prompt], seeds=list(seeds), steps=steps, height=setting["height"],
                              width=setting["width"], classes=classes, **pipe_kwargs)
