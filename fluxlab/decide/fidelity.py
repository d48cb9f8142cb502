"""Image-verdict metrics of one run against a reference run: SSIM, PSNR (scikit-image) and final-latent rel-L2."""

from __future__ import annotations

import math

import numpy as np

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
