"""SageAttention (``sageattention.sageattn``, 1.0.6): INT8 Q·K, half-precision P·V. Quantised.

Called with ``tensor_layout="NHD"`` (= ``[B, S, H, D]``) and an explicit ``sm_scale``. It returns no
log-sum-exp (and silently ignores unknown keywords, so none is asked for).
"""

from __future__ import annotations

from .base import HALF_DTYPES, Backend, Capabilities, Requirement

# The adapter and the emulator that models it (emu_sage) follow 1.0.6's Triton kernel exactly.
SAGE = Requirement("sageattention", "sageattention", "pip install 'sageattention==1.0.6'", exact_version="1.0.6")


def bind_sage():
    """Import sageattention once (when a plan is made) and return the adapter around ``sageattn``."""
    from sageattention import sageattn

    def sage(q, k, v, *, scale, causal=False, return_lse=False):
        # With smooth_k (its default) sageattn 1.0.6 subtracts K's mean from the caller's tensor in place:
        # hand it a copy, or the caller's K (e.g. a captured record) silently changes.
        return sageattn(q, k.clone(), v, tensor_layout="NHD", is_causal=causal, sm_scale=scale, smooth_k=True)
    return sage


def sage(q, k, v, **kwargs):
    return bind_sage()(q, k, v, **kwargs)


BACKENDS = [
    Backend("sage", sage,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_80+",)}, dtypes=HALF_DTYPES,
                         head_dims=(64, 96, 128), gqa=False, quantised=True),
            "SageAttention (int8 QK^T with K smoothing; quantised)", requires=(SAGE,), binder=bind_sage,
            # diffusers wants sageattention >= 2.1.1 for these; fluxlab's adapter runs 1.0.6's Triton kernel.
            aliases=("sage_attn",), diffusers=("sage", "sage_varlen", "_sage_qk_int8_pv_fp16_triton")),
]
