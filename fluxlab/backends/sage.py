"""SageAttention (``sageattention.sageattn``, >= 1.0.6): INT8 Q·K, half-precision P·V. Quantised.

Called with ``tensor_layout="NHD"`` (= ``[B, S, H, D]``) and an explicit ``sm_scale``.
"""

from __future__ import annotations

from .base import HALF_DTYPES, Backend, Capabilities, Requirement

SAGE = Requirement("sageattention", "sageattention", "pip install 'sageattention>=1.0.6'", min_version="1.0.6")


def sage(q, k, v, *, scale, causal=False, return_lse=False):
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=causal, sm_scale=scale)


BACKENDS = [
    Backend("sage", sage,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_80+",)}, dtypes=HALF_DTYPES,
                         head_dims=(64, 96, 128), gqa=False, quantised=True),
            "SageAttention (int8 QK^T with K smoothing; quantised)", requires=(SAGE,)),
]
