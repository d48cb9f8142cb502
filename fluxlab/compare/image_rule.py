"""Image verdicts as data: exact kernels against the spread between exact kernels; quantised against a budget.
Used by ``compare_images`` (``ImageComparison.verdicts``) and by ``fluxlab.decide``.
"""

from __future__ import annotations

import dataclasses
import math

from .tolerances import FAIL, PASS, WARN, worst

# The exact kernels whose images define the spread ("yardstick") on this machine, model and dtype: they run on
# every platform, and none of them can be a user's kernel, so a broken kernel cannot widen its own yardstick.
YARDSTICK_BACKENDS = ("sdpa", "sdpa_math", "reference")
# The yardstick never drops below this final-latent rel-L2: about 16 float32 roundings. Exact kernels measured on
# the CPU in float32 (embedded model, 4 and 8 steps, seeds 0-1) lie 8.4e-7 to 1.1e-6 from float64, so the floor
# never outweighs a measured spread; it only stops two bit-identical kernels (spread 0) from making any
# difference at all a failure.
YARDSTICK_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class ExactImageRule:
    """Final-latent rel-L2 against the reference, as a multiple of the exact-kernel spread."""

    pass_ratio: float = 4.0
    warn_ratio: float = 16.0


@dataclasses.dataclass(frozen=True)
class FidelityBudget:
    """Quantised, emulated or approximate kernels: SSIM, PSNR (dB) and final-latent rel-L2, all three must hold."""

    pass_ssim: float = 0.98  # sglang's CI gate against stored images
    warn_ssim: float = 0.95
    pass_psnr: float = 30.0
    warn_psnr: float = 25.0
    pass_latent_rel_l2: float = 0.03
    warn_latent_rel_l2: float = 0.06


EXACT_IMAGE_RULE = ExactImageRule()
FIDELITY_BUDGET = FidelityBudget()

IMAGE_RULE_TEXT = f"""\
Image verdicts (per backend; with several seeds the worst seed decides):

| kernel | pass | warn | fail |
|---|---|---|---|
| exact | final-latent rel-L2 <= {EXACT_IMAGE_RULE.pass_ratio:g} x spread | <= {EXACT_IMAGE_RULE.warn_ratio:g} x spread \
| beyond warn |
| quantised / emulated (caps.quantised, caps.emulated) | SSIM >= {FIDELITY_BUDGET.pass_ssim:g}, PSNR >= \
{FIDELITY_BUDGET.pass_psnr:g} dB and final-latent rel-L2 <= {FIDELITY_BUDGET.pass_latent_rel_l2:g} | SSIM >= \
{FIDELITY_BUDGET.warn_ssim:g}, PSNR >= {FIDELITY_BUDGET.warn_psnr:g} dB, rel-L2 <= \
{FIDELITY_BUDGET.warn_latent_rel_l2:g} | beyond warn |
| any kernel | - | - | generation raised, or NaN/inf in the image or latents |

spread = max(largest final-latent rel-L2 between two of the exact kernels {', '.join(YARDSTICK_BACKENDS)} on the
same machine, model, dtype, prompt and seed; {YARDSTICK_FLOOR:g}). Why: an exact kernel differs from another
exact kernel only by rounding, so its drift is measured against what rounding alone does here (on the CPU in
float32 that is ~1e-6; a bf16 GPU run has a far larger spread, and the rule scales with it). Latents are
judged, not only pixels: the 64x64 images of a small model hide drift that the latents show. Measured on the
embedded model (CPU, float32, 4 and 8 steps, seeds 0-1; benchmarks/image_rule.py writes them to
benchmarks/results/cpu/image_rule.json): exact
kernels (sdpa, sdpa_math, sdpa_flash, flex) land at 0.8-1.1e-6 from float64; a softmax scale 1 % too large at
1.1-1.4e-2, 10 % too large at 0.10-0.16 while its SSIM stays 0.988-0.992 and its PSNR 33-35 dB, so
sglang's SSIM >= 0.98 gate alone would pass it: the latent budget is what fails it. Rounding attention's
inputs and output to bf16 (what a bf16 kernel does) lands at 3.3-4.7e-3, inside the budget with 6x headroom.
"""


def is_approximate(backend) -> bool:
    """Judged against the fidelity budget rather than the exact-kernel spread."""
    caps = backend.caps
    return bool(caps.quantised or getattr(caps, "emulated", False))


def yardstick_of(spread: float) -> float:
    return max(spread, YARDSTICK_FLOOR) if math.isfinite(spread) else YARDSTICK_FLOOR


def _grade(value: float, pass_limit: float, warn_limit: float, *, higher_is_better: bool = False) -> str:
    if math.isnan(value):
        return FAIL
    if higher_is_better:
        return PASS if value >= pass_limit else WARN if value >= warn_limit else FAIL
    return PASS if value <= pass_limit else WARN if value <= warn_limit else FAIL


def judge_exact_image(latent_rel_l2: float, spread: float, rule: ExactImageRule = EXACT_IMAGE_RULE) -> tuple[str, str]:
    yardstick = yardstick_of(spread)
    ratio = latent_rel_l2 / yardstick
    verdict = _grade(ratio, rule.pass_ratio, rule.warn_ratio) if math.isfinite(latent_rel_l2) else FAIL
    return verdict, (f"final-latent rel-L2 {latent_rel_l2:.3g} = {ratio:.3g} x the exact-kernel spread "
                     f"{yardstick:.3g} (pass <= {rule.pass_ratio:g}x, warn <= {rule.warn_ratio:g}x)")


def judge_budget(ssim: float, psnr: float, latent_rel_l2: float,
                 budget: FidelityBudget = FIDELITY_BUDGET) -> tuple[str, str]:
    verdict = worst([
        _grade(ssim, budget.pass_ssim, budget.warn_ssim, higher_is_better=True),
        _grade(psnr, budget.pass_psnr, budget.warn_psnr, higher_is_better=True),
        _grade(latent_rel_l2, budget.pass_latent_rel_l2, budget.warn_latent_rel_l2)
        if math.isfinite(latent_rel_l2) else FAIL,
    ])
    return verdict, (f"fidelity budget: SSIM {ssim:.4f} (pass >= {budget.pass_ssim:g}), PSNR {psnr:.1f} dB "
                     f"(pass >= {budget.pass_psnr:g}), final-latent rel-L2 {latent_rel_l2:.3g} "
                     f"(pass <= {budget.pass_latent_rel_l2:g})")
