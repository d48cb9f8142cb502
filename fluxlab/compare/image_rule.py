"""Image verdicts as data: every kernel is judged by how many bands of legitimate variation it lies from the
reference (``fluxlab.compare.bands``). Used by ``compare_images`` (``ImageComparison.verdicts``) and ``fluxlab.decide``.
"""

from __future__ import annotations

import math

from .bands import FLOORS, PASS_BANDS, WARN_BANDS, judge_exact_spread

# The exact kernels whose images define the exact class's band on the fly (same machine, model, dtype, prompt and
# seed): they run on every platform, and none of them can be a user's kernel, so a broken kernel cannot widen its
# own band.
YARDSTICK_BACKENDS = ("sdpa", "sdpa_math", "reference")
# The exact band never drops below this final-latent rel-L2 (about 16 float32 roundings): two bit-identical
# kernels (spread 0) must not make any difference at all a failure.
YARDSTICK_FLOOR = FLOORS["final_latent_rel_l2"]

IMAGE_RULE_TEXT = f"""\
Image verdicts (per backend; with several seeds the worst seed decides), counted in bands of legitimate variation:

| kernel | band (the spread legitimate changes produce) | pass | warn | fail |
|---|---|---|---|---|
| exact | final-latent rel-L2 between the exact kernels {', '.join(YARDSTICK_BACKENDS)}, measured here at the same \
prompt and seeds | <= {PASS_BANDS:g} bands | <= {WARN_BANDS:g} bands | beyond |
| quantised / emulated (caps.quantised, caps.emulated) | final-latent rel-L2, 1 - SSIM and pixel RMSE (PSNR) \
between correct bf16 kernels (aiter RTNE vs RTNA, bf16 inputs/output, 64-key blocks) and the exact kernels, over \
several prompts and seeds | <= {PASS_BANDS:g} bands in all three | <= {WARN_BANDS:g} | beyond |
| any kernel | - | - | - | generation raised, or NaN/inf in the image or latents |

bands = distance from the reference / the band. The low-precision band comes from the committed file of the
pipeline's setting (benchmarks/results/<card>/image_bands.json, written by benchmarks/image_bands.py: model,
dtype, device, steps, size and text length must match) or, where none matches, is measured on the fly for this
pipeline at the same prompt and seeds (fluxlab.compare.measure_image_band; pass band= to reuse a saved one).
Why {PASS_BANDS:g} and {WARN_BANDS:g}: a band is the largest distance between two legitimate variants, so a kernel within one
band of a legitimate variant lies within {PASS_BANDS:g} bands of the reference (triangle inequality); warn allows twice
that for prompts and seeds the band was not measured on. Every verdict note says how many bands away, and where
the band came from (docs/verdicts.md, "Image bands").
"""


def is_approximate(backend) -> bool:
    """Judged against the low-precision band rather than the exact-kernel spread."""
    caps = backend.caps
    return bool(caps.quantised or getattr(caps, "emulated", False))


def yardstick_of(spread: float) -> float:
    return max(spread, YARDSTICK_FLOOR) if math.isfinite(spread) else YARDSTICK_FLOOR


def judge_exact_image(latent_rel_l2: float, spread: float, source: str | None = None) -> tuple[str, str]:
    """An exact kernel's final-latent rel-L2 in bands of the exact-kernel spread (``source``: where it came from)."""
    return judge_exact_spread(latent_rel_l2, spread,
                              source or f"the exact kernels {', '.join(YARDSTICK_BACKENDS)} measured here")
