"""SageAttention (``sageattention.sageattn``, 1.0.6): INT8 Q·K, half-precision P·V. Quantised.

Called with ``tensor_layout="NHD"`` (= ``[B, S, H, D]``) and an explicit ``sm_scale``. It returns no
log-sum-exp (and silently ignores unknown keywords, so none is asked for).
"""

from __future__ import annotations

from .base import HALF_DTYPES, Backend, Capabilities, Requirement

# The adapter and the emulator that models it (emu_sage) follow 1.0.6's Triton kernel exactly.
SAGE = Requirement("sageattention", "sageattention", "pip install 'sageattention==1.0.6'", exact_version="1.0.6")


KEY_BLOCK = 64  # the non-causal kernel's BLOCK_N (attn_qk_int8_per_block.py)


def _ragged_keys(q, k, platform):
    """1.0.6's non-causal kernel lets the keys past the last multiple of 64 into the softmax as zero keys with zero
    values (loaded masked, scores never masked): the output is biased toward zero. Refused rather than run (the
    causal kernel's mask hides them, but the check does not see ``causal``: refused there too)."""
    keys = k.shape[1]
    if keys % KEY_BLOCK == 0:
        return []
    return [f"sage (sageattention 1.0.6) gives a wrong output for {keys} keys: its kernel reads keys in blocks of "
            f"{KEY_BLOCK} and lets the {-keys % KEY_BLOCK} missing ones of the last block into the softmax with a "
            "zero value, which shrinks every output toward zero (emu_sage reproduces it on any machine). Use a key "
            f"length that is a multiple of {KEY_BLOCK} (e.g. pad the prompt), or another backend"]


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
            extra_checks=_ragged_keys,
            # diffusers wants sageattention >= 2.1.1 for these; fluxlab's adapter runs 1.0.6's Triton kernel.
            aliases=("sage_attn",), diffusers=("sage", "sage_varlen", "_sage_qk_int8_pv_fp16_triton")),
]
