"""Image-verdict metrics of one run against a reference run: SSIM, PSNR (scikit-image) and final-latent rel-L2."""

from __future__ import annotations

import math

import numpy as np

from ..models.limits import diffusers_names
from .runs import Run, rel_l2


def fidelity(run: Run, reference: Run) -> dict:
    """``{"ssim", "psnr", "final_latent_rel_l2", "max_abs_pixel"}``; images are needed for SSIM/PSNR (NaN else)."""
    numbers = {"final_latent_rel_l2": rel_l2(run.final, reference.final), "ssim": math.nan, "psnr": math.nan,
               "max_abs_pixel": math.nan}
    if run.image is None or reference.image is None:
        return numbers
    if not np.isfinite(run.image).all():
        return numbers | {"final_latent_rel_l2": math.inf}
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as exc:
        raise ImportError("image verdicts need scikit-image for PSNR/SSIM: pip install scikit-image "
                          "(or fluxlab[compare])") from exc
    with np.errstate(divide="ignore"):
        numbers["psnr"] = float(peak_signal_noise_ratio(reference.image, run.image, data_range=1.0))
    numbers["ssim"] = float(structural_similarity(reference.image, run.image, channel_axis=-1, data_range=1.0))
    numbers["max_abs_pixel"] = float(np.abs(run.image - reference.image).max())
    return numbers


@diffusers_names
def image_verdict(pipe, schedule, *, prompt: str, steps: int, seeds=(0,), exact: str | None = None,
                  height=None, width=None, band=None, **pipe_kwargs) -> tuple[str, str]:
    """The image verdict of a whole schedule against ``exact`` everywhere (default: the pipeline's own choice),
    in bands (``IMAGE_RULE_TEXT``): a schedule with a quantised/emulated kernel by the low-precision band
    (``band``, else the committed one of this setting, else one measured here:
    ``fluxlab.compare.band_measure.band_for``);
    an all-exact one by the spread between the exact kernels sdpa, sdpa_math and float64 at the same seeds.
    """
    from .. import registry
    from ..compare.band_measure import band_for
    from ..compare.bands import LOW_PRECISION, from_image_metrics, judge_with_band
    from ..compare.image_rule import YARDSTICK_BACKENDS, is_approximate, judge_exact_image
    from ..compare.tolerances import worst
    from ..models.schedule import Schedule
    from .runs import Runner, as_schedule

    schedule = as_schedule(pipe, schedule, "schedule")
    reference = as_schedule(pipe, exact, "exact") if exact is not None else None
    approximate = any(is_approximate(registry.get_backend(name.split(":")[0])) for name in schedule.backend_names())
    runner = Runner(pipe, prompt=prompt, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs)
    low_band = band_for(pipe, band, prompt=prompt, seeds=seeds, steps=steps, height=height, width=width,
                        pipe_kwargs=pipe_kwargs) if approximate else None
    verdicts, notes = [], []
    for seed in seeds:
        base = runner.run(reference, seed=seed, image=True)
        numbers = fidelity(runner.run(schedule, seed=seed, image=True), base)
        if approximate:
            verdict, note = judge_with_band(from_image_metrics(numbers["ssim"], numbers["psnr"],
                                                               numbers["final_latent_rel_l2"]), low_band, LOW_PRECISION)
        else:
            finals = [runner.run(Schedule(default=name), seed=seed).final for name in YARDSTICK_BACKENDS
                      if name in runner.state.allowed]
            spread = max((rel_l2(a, b) for i, a in enumerate(finals) for b in finals[i + 1:]), default=math.nan)
            verdict, note = judge_exact_image(numbers["final_latent_rel_l2"], spread,
                                              f"the exact kernels {', '.join(YARDSTICK_BACKENDS)} measured here")
        verdicts.append(verdict)
        notes.append(f"seed {seed}: {note}")
    return worst(verdicts), "; ".join(notes)
