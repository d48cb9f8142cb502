"""One adapter per attention library, all behind the [batch, seq, heads, head_dim] contract (base.py)."""

from . import aiter, aiter_triton, emulated, flash_attn, flex, reference, sage, sdpa
from .base import Backend, Capabilities, Requirement

BUILTIN_BACKENDS = [
    *sdpa.BACKENDS,
    *flash_attn.BACKENDS,
    *aiter.BACKENDS,
    *aiter_triton.BACKENDS,
    *sage.BACKENDS,
    *flex.BACKENDS,
    *reference.BACKENDS,
    *emulated.BACKENDS,  # never picked automatically: not in any priority list
]

__all__ = ["BUILTIN_BACKENDS", "Backend", "Capabilities", "Requirement"]
