"""Which exact backend runs when nobody chose: one row per vendor/arch, best first; and the priority groups.

Measured on an H100 at FLUX.2 shapes (bf16, D 128; benchmarks/results/h100/attention.json): FA4 and SDPA's
cuDNN kernel run at ~1.8x SDPA's flash (FA2) kernel. fa2 is proven on stand-ins only (its call contract,
tests/test_standin_contracts.py; no build has run on a GPU here), so its rank is the upstream project's published
ordering. fa3 ran on an H100 from PyPI's fa3-fwd (benchmarks/results/h100/hopper_quant/): level with fa4 and cuDNN,
ahead of neither at both FLUX.2 sizes, so it stays on the Hopper row below them and is only picked on a machine that
lacks both. Quantised kernels (sage, sage2, fa3_fp8, aiter_sage) are never picked automatically: a researcher opts
into them. Rows are tried most specific first:
(vendor, arch), then (vendor, None).
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


# Priority groups: a name that stands for the best member that can run the inputs, tried in this order.
# ``fa`` is the best FlashAttention generation (fa4 measured fastest on H100; fa3/fa2 stand-in-tested).
GROUPS: dict[str, dict[str | None, tuple[str, ...]]] = {
    "fa": {"sm_90": ("fa4", "fa3", "fa2"), "sm_100": ("fa4", "fa2"), "sm_103": ("fa4", "fa2"), None: ("fa2",)},
}


def priority_for(platform: Platform) -> tuple[str, ...]:
    return PRIORITY.get((platform.vendor, platform.arch)) or PRIORITY[(platform.vendor, None)]


def group_members(group: str, platform: Platform) -> tuple[str, ...]:
    """The backends a priority group tries on ``platform``, best first."""
    rows = GROUPS[group]
    return rows.get(platform.arch) or rows[None]
