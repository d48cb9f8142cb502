"""One adapter per attention library, all behind the [batch, seq, heads, head_dim] contract (base.py)."""

from . import (aiter, aiter_mha_v4, aiter_sage_mxfp4, aiter_triton, emu_aiter_quant, emulated, flash_attn, flex,
               reference, sage, sdpa)
from .base import Backend, Capabilities, Requirement

BUILTIN_BACKENDS = [
    *sdpa.BACKENDS,
    *flash_attn.BACKENDS,
    *aiter.BACKENDS,
    *aiter_triton.BACKENDS,
    *aiter_mha_v4.BACKENDS,  # quantised, explicit only: in no priority list
    *aiter_sage_mxfp4.BACKENDS,  # quantised, explicit only
    *sage.BACKENDS,
    *flex.BACKENDS,
    *reference.BACKENDS,
    *emulated.BACKENDS,  # never picked automatically: not in any priority list
    *emu_aiter_quant.BACKENDS,  # emulated too: never picked automatically
]

__all__ = ["BUILTIN_BACKENDS", "Backend", "Capabilities", "Requirement"]
