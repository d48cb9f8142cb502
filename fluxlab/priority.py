"""Which exact backend runs when nobody chose: one row per vendor/arch, best first.

Measured on H100 and H200 at FLUX.2 shapes (bf16, D 128; README "Performance"): FA4 and SDPA's cuDNN
kernel run at ~1.8x SDPA's flash (FA2) kernel. Quantised kernels (sage, aiter_sage) are never picked
automatically: a researcher opts into them. Rows are tried most specific first: (vendor, arch), then
(vendor, None).
"""

from __future__ import annotations

from .platform import Platform

PRIORITY: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("nvidia", "sm_90"): ("fa4", "sdpa_cudnn", "fa3", "sdpa_flash", "fa2", "sdpa_efficient", "sdpa"),
    ("nvidia", "sm_100"): ("fa4", "sdpa_cudnn", "sdpa_flash", "fa2", "sdpa_efficient", "sdpa"),
    ("nvidia", "sm_103"): ("fa4", "sdpa_cudnn", "sdpa_flash", "fa2", "sdpa_efficient", "sdpa"),
    ("nvidia", None): ("sdpa_cudnn", "sdpa_flash", "fa2", "sdpa_efficient", "sdpa"),
    ("amd", "gfx942"): ("aiter", "fa2", "sdpa_flash", "sdpa_efficient", "sdpa"),
    ("amd", "gfx950"): ("aiter", "fa2", "sdpa_flash", "sdpa_efficient", "sdpa"),
    ("amd", None): ("aiter", "sdpa_flash", "sdpa_efficient", "sdpa"),
    # On CPU torch's own pick is the fastest exact kernel, and bit-identical to diffusers' default.
    ("cpu", None): ("sdpa", "sdpa_flash", "sdpa_math"),
    ("other", None): ("sdpa",),
}


def priority_for(platform: Platform) -> tuple[str, ...]:
    return PRIORITY.get((platform.vendor, platform.arch)) or PRIORITY[(platform.vendor, None)]
