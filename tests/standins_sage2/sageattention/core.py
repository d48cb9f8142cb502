"""STAND-IN for SageAttention 2's `sageattention.core` (2.2.0): `SM90_ENABLED` and the sm90 entry point's signature,
defaults and return rule (`o`, or `(o, lse)` with the natural-log LSE [B, H, S]); computes plain attention and records
every call in CALLS. Not evidence that the kernel runs."""

import sys

sys.path.insert(0, __file__.rsplit("/standins_sage2/", 1)[0] + "/standins")
from _attention import attend  # noqa: E402

SM90_ENABLED = True
CALLS = []


def sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="HND", is_causal=False, qk_quant_gran="per_thread",
                                      sm_scale=None, pv_accum_dtype="fp32+fp32", smooth_k=True, return_lse=False,
                                      **kwargs):
    CALLS.append({"tensor_layout": tensor_layout, "is_causal": is_causal, "qk_quant_gran": qk_quant_gran,
                  "sm_scale": sm_scale, "pv_accum_dtype": pv_accum_dtype, "smooth_k": smooth_k,
                  "return_lse": return_lse, "kwargs": kwargs, "shapes": [tuple(t.shape) for t in (q, k, v)]})
    assert qk_quant_gran in ["per_warp", "per_thread"], "qk_quant_gran must be either 'per_warp' or 'per_thread'."
    if pv_accum_dtype == "fp32":
        raise NotImplementedError("Please use pv_accum_dtype='fp32+fp32' for sm90.")
    if tensor_layout != "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out, lse = attend(q, k, v, sm_scale, is_causal)
    if tensor_layout != "NHD":
        out = out.transpose(1, 2)
    return (out, lse) if return_lse else out
