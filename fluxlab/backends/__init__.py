"""One adapter per attention library, all behind the [batch, seq, heads, head_dim] contract (base.py)."""

from . import aiter, aiter_triton, emulated, emulated_hopper, fa3_fp8, flash_attn, flex, reference, sage, sage2, sdpa
from .base import Backend, Capabilities, Requirement

BUILTIN_BACKENDS = [
    *sdpa.BACKENDS,
    *flash_attn.BACKENDS,
    *aiter.BACKENDS,
    *aiter_triton.BACKENDS,
    *sage.BACKENDS,
    *fa3_fp8.BACKENDS,  # quantised: in no priority list
    *sage2.BACKENDS,  # quantised: in no priority list
    *flex.BACKENDS,
    *reference.BACKENDS,
    *emulated.BACKENDS,  # never picked automatically: not in any priority list
    *emulated_hopper.BACKENDS,
]

__all__ = ["BUILTIN_BACKENDS", "Backend", "Capabilities", "Requirement"]
