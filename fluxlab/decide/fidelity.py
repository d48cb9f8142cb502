"""Image-verdict metrics of one run against a reference run, and the image verdict of a whole schedule."""

from __future__ import annotations

import math

import numpy as np

from .. import registry
from ..compare.bands import (LOW_PRECISION, YARDSTICK_BACKENDS, exact_spread, from_image_metrics, is_approximate,
                             judge_exact_image, judge_with_band)
from ..compare.images import band_for, image_metrics
from ..compare.tolerances import worst
from ..models.limits import diffusers_names
from ..models.schedule import Schedule
from .runs import Run, Runner, as_schedule, rel_l2


def fidelity(run: Run, reference: Run) -> dict:
    """``{"ssim", "psnr", "final_latent_rel_l2", "max_abs_pixel"}``; images are needed for SSIM/PSNR (NaN else)."""
    numbers = {"final_latent_rel_l2": rel_l2(run.final, reference.final), "ssim": math.nan, "psnr": math.nan,
               "max_abs_pixel": math.nan}
    if run.image is None or reference.image is None:
        return numbers
    if not np.isfinite(run.image).all():
        return numbers | {"final_latent_rel_l2": math.inf}
    measured = image_metrics(run.image, reference.image)
    return numbers | {key: measured[key] for key in ("ssim", "psnr", "max_abs_pixel")}


@diffusers_names
def image_verdict(pipe, schedule, *, prompt: str, steps: int, seeds=(0,), exact: str | None = None,
                  height=None, width=None, band=None, **pipe_kwargs) -> tuple[str, str]:
    """The image verdict of a whole schedule against ``exact`` everywhere (default: the pipeline's own choice),
    in bands (``IMAGE_RULE_TEXT``): a schedule with a quantised/emulated kernel by the low-precision band
    (``band``, else the committed one, else one measured here: ``fluxlab.compare.images.band_for``); an all-exact
    one by the spread between the exact kernels sdpa, sdpa_math and float64 at the same seeds."""
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
            spread = exact_spread(runner.run(Schedule(default=name), seed=seed).final for name in YARDSTICK_BACKENDS
                                  if name in runner.state.allowed)
            verdict, note = judge_exact_image(numbers["final_latent_rel_l2"], spread)
        verdicts.append(verdict)
        notes.append(f"seed {seed}: {note}")
    return worst(verdicts), "; ".join(notes)
