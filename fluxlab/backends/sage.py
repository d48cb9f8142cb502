"""SageAttention, both called with ``tensor_layout="NHD"`` (= ``[B, S, H, D]``) and an explicit ``sm_scale``.

- ``sage``: 1.0.6's ``sageattn`` (INT8 Q·K, half-precision P·V; quantised). It returns no log-sum-exp (and silently
  ignores unknown keywords, so none is asked for). The adapter and ``emu_sage`` follow its Triton kernel exactly.
- ``sage2``: SageAttention 2's Hopper kernel ``sageattn_qk_int8_pv_fp8_cuda_sm90``: INT8 Q·K (per thread or per
  warp), K minus its token mean (``smooth_k``), e4m3 V per channel and P, P·V per key block added to a float32 buffer.
  Its LSE comes back natural-log ``[B, H, S]`` (the wrapper converts it and adds back the K-mean term). No wheel on
  PyPI; ``emu_sage2`` (emulated_hopper.py) models the numerics (docs/hopper.md).
Both are quantised: never picked automatically, chosen by name only.
"""

from __future__ import annotations

from .base import HALF_DTYPES, Backend, Capabilities, Requirement, split_lse, unbound

SAGE = Requirement("sageattention", "sageattention", "pip install 'sageattention==1.0.6'", exact_version="1.0.6")
SAGE2 = Requirement("sageattention", "sageattention",
                    "build SageAttention 2 from source as its README says (github.com/thu-ml/SageAttention; "
                    "TORCH_CUDA_ARCH_LIST=9.0 for an H100/H200)", min_version="2.0.0")
KEY_BLOCK = 64  # 1.0.6's non-causal kernel's BLOCK_N (attn_qk_int8_per_block.py)
QK_QUANT_GRAN = {"per_thread": "one INT8 scale per thread's query rows (2 of each 16) and key columns (32 of each "
                               "128): the kernel's default",
                 "per_warp": "one INT8 scale per 16 queries and per 128 keys"}
PV_ACCUM = {"fp32+fp32": "P·V per key block in the FP8 MMA's accumulator, added to a float32 buffer (the only "
                         "choice on sm90)"}


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


def bind_sage2():
    """Import SageAttention 2 once (when a plan is made) and return the adapter around its sm90 kernel."""
    from sageattention import core

    if not getattr(core, "SM90_ENABLED", False):
        raise ImportError("sageattention is installed without its sm90 extension (sageattention._qattn_sm90): "
                          f"{SAGE2.install}")
    kernel = core.sageattn_qk_int8_pv_fp8_cuda_sm90

    def sage2(q, k, v, *, scale, causal=False, return_lse=False, qk_quant_gran="per_thread",
              pv_accum_dtype="fp32+fp32", smooth_k=True):
        result = kernel(q, k, v, tensor_layout="NHD", is_causal=causal, qk_quant_gran=qk_quant_gran,
                        sm_scale=scale, pv_accum_dtype=pv_accum_dtype, smooth_k=bool(smooth_k),
                        return_lse=return_lse)
        return split_lse(result, return_lse, "sageattn_qk_int8_pv_fp8_cuda_sm90")
    return sage2


def _nvidia(*arches: str, **caps) -> Capabilities:
    return Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": arches}, dtypes=HALF_DTYPES, quantised=True,
                        **caps)


BACKENDS = [
    Backend("sage", unbound(bind_sage), _nvidia("sm_80+", head_dims=(64, 96, 128), gqa=False),
            "SageAttention (int8 QK^T with K smoothing; quantised)", requires=(SAGE,), binder=bind_sage,
            extra_checks=_ragged_keys,
            # diffusers wants sageattention >= 2.1.1 for these; fluxlab's adapter runs 1.0.6's Triton kernel.
            aliases=("sage_attn",), diffusers=("sage", "sage_varlen", "_sage_qk_int8_pv_fp16_triton")),
    Backend("sage2", unbound(bind_sage2), _nvidia("sm_90", min_head_dim=64, max_head_dim=128, returns_lse=True),
            "SageAttention 2, Hopper kernel (int8 Q·K with K smoothing, fp8 P·V; quantised)", requires=(SAGE2,),
            options={"qk_quant_gran": "per_thread", "pv_accum_dtype": "fp32+fp32", "smooth_k": True},
            option_values={"qk_quant_gran": QK_QUANT_GRAN, "pv_accum_dtype": PV_ACCUM,
                           "smooth_k": {True: "subtract K's token mean before quantising (default)",
                                        False: "quantise K as it is"}},
            binder=bind_sage2, diffusers=("_sage_qk_int8_pv_fp8_cuda_sm90",)),
]
