"""SageAttention 2's Hopper kernel (``sage2``): ``sageattention.sageattn_qk_int8_pv_fp8_cuda_sm90``. Quantised: INT8
Q·K (``qk_quant_gran``: one scale per thread's rows/columns, or per warp of 16 queries and block of 128 keys), K
minus its token mean (``smooth_k``), V in e4m3 with one scale per channel, P in e4m3, P·V accumulated per key block
and added to a float32 buffer (``pv_accum_dtype="fp32+fp32"``, the only accumulation the sm90 kernel has).
Never picked automatically (in no priority list); chosen by name only.

Called with ``tensor_layout="NHD"`` (= ``[B, S, H, D]``) and an explicit ``sm_scale``; returns the natural-log LSE
``[B, H, S]`` when asked (the wrapper converts its base-2 value and adds back the K-mean term). SageAttention 2 has no
wheel on PyPI: install it from its repository's instructions (github.com/thu-ml/SageAttention, ``sm90`` needs
CUDA >= 12.3). ``emu_sage2`` (emulated_hopper.py) models the numerics.
"""

from __future__ import annotations

from .base import HALF_DTYPES, Backend, Capabilities, Requirement

SAGE2 = Requirement("sageattention", "sageattention",
                    "build SageAttention 2 from source as its README says (github.com/thu-ml/SageAttention; "
                    "TORCH_CUDA_ARCH_LIST=9.0 for an H100/H200)", min_version="2.0.0")

QK_QUANT_GRAN = {"per_thread": "one INT8 scale per thread's query rows (2 of each 16) and key columns (32 of each "
                               "128): the kernel's default",
                 "per_warp": "one INT8 scale per 16 queries and per 128 keys"}
PV_ACCUM = {"fp32+fp32": "P·V per key block in the FP8 MMA's accumulator, added to a float32 buffer (the only "
                         "choice on sm90)"}


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
        if not return_lse:
            return result
        out, lse = result
        return out, lse.float()
    return sage2


def sage2(q, k, v, **kwargs):
    return bind_sage2()(q, k, v, **kwargs)


BACKENDS = [
    Backend("sage2", sage2,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_90",)}, dtypes=HALF_DTYPES,
                         max_head_dim=128, returns_lse=True, quantised=True),
            "SageAttention 2, Hopper kernel (int8 Q·K with K smoothing, fp8 P·V; quantised)", requires=(SAGE2,),
            options={"qk_quant_gran": "per_thread", "pv_accum_dtype": "fp32+fp32", "smooth_k": True},
            option_values={"qk_quant_gran": QK_QUANT_GRAN, "pv_accum_dtype": PV_ACCUM,
                           "smooth_k": {True: "subtract K's token mean before quantising (default)",
                                        False: "quantise K as it is"}},
            binder=bind_sage2, diffusers=("_sage_qk_int8_pv_fp8_cuda_sm90",)),
]
