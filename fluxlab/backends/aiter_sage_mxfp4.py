"""AMD aiter's MXFP4 Sage kernel in Triton (``fav3_sage_mxfp4_wrapper``), ROCm gfx950 only.

``aiter.ops.triton.attention.fav3_sage_attention_mxfp4_wrapper.fav3_sage_mxfp4_wrapper(q, k, v, causal,
layout="bshd", q_smooth=False, hadamard_rotation=False, ...)`` (ROCm/aiter e4048607a535) quantises Q/K to MXFP4
after a Walsh–Hadamard rotation (``hadamard_rotation=False`` is refused by the wrapper itself, so it is passed
True) and V to fp8; it takes no softmax scale (head_dim ** -0.5 inside), so another scale is refused here. Its
config helper raises on any arch but gfx950. Proven on a stand-in only.
"""

from __future__ import annotations

from ..errors import BackendUnavailableError
from .aiter import AITER
from .base import HALF_DTYPES, Backend, Capabilities, import_first

MXFP4_SAGE_MODULE = "aiter.ops.triton.attention.fav3_sage_attention_mxfp4_wrapper"


def bind_aiter_sage_mxfp4():
    wrapper = import_first(MXFP4_SAGE_MODULE).fav3_sage_mxfp4_wrapper

    def aiter_sage_mxfp4(q, k, v, *, scale, causal=False, return_lse=False):
        if abs(scale - q.shape[-1] ** -0.5) > 1e-12 * scale:
            raise BackendUnavailableError(f"aiter_sage_mxfp4 takes no softmax scale (it uses head_dim ** -0.5 = "
                                          f"{q.shape[-1] ** -0.5:g}); {scale:g} would be silently wrong")
        return wrapper(q, k, v, causal, layout="bshd", hadamard_rotation=True, return_lse=return_lse)
    return aiter_sage_mxfp4


def aiter_sage_mxfp4(q, k, v, **kwargs):
    """For callers of ``backend.fn``: binds on every call (plans bind once)."""
    return bind_aiter_sage_mxfp4()(q, k, v, **kwargs)


BACKENDS = [
    Backend("aiter_sage_mxfp4", aiter_sage_mxfp4,
            Capabilities(vendors=frozenset({"amd"}), arches={"amd": ("gfx950",)}, dtypes=HALF_DTYPES,
                         head_dims=(128,), gqa=False, returns_lse=True, quantised=True,
                         stand_in_only=True),  # GQA not verified: refused
            "AMD aiter MXFP4 Sage attention (Triton, rotated MXFP4 Q/K + fp8 V), ROCm gfx950; quantised",
            requires=(AITER,), binder=bind_aiter_sage_mxfp4),
]
