"""STAND-IN for `aiter.ops.mha_v4` (ROCm/aiter e4048607a535): the AttentionFormat IDs, `native_fp8_format()`,
`mha_v4`'s signature, its input checks and its manifest rows (which format runs on which arch); attention in
plain torch, bf16 out. `GFX` plays `get_gfx()`."""

from enum import IntEnum

from _attention import attend

CALLS = []
GFX = "gfx950"


class AttentionFormat(IntEnum):
    FP32 = 0
    FP16 = 1
    BF16 = 2
    FP8_E4M3 = 3
    FP8_E4M3_FNUZ = 4
    FP8_E5M2 = 5
    FP8_E5M2_FNUZ = 6
    FP6_E2M3 = 7
    FP6_E3M2 = 8
    FP4_E2M1 = 9
    INT8 = 10
    UINT8 = 11
    INT4 = 12
    UINT4 = 13
    FP8 = FP8_E4M3
    MXFP6 = FP6_E2M3
    MXFP4 = FP4_E2M1


# (q, k, v) format IDs with a kernel row, per arch (the fmha_v4_fwd.csv manifests, dense rows)
_ROWS = {"gfx950": {(10, 10, 3), (3, 3, 3), (7, 7, 3), (7, 7, 9), (9, 9, 3), (9, 9, 9), (3, 3, 7)},
         "gfx942": {(10, 10, 4)}}


def native_fp8_format():
    return AttentionFormat.FP8_E4M3_FNUZ if GFX == "gfx942" else AttentionFormat.FP8_E4M3


def mha_v4(q, k, v, q_format, k_format, v_format, softmax_scale=None, out=None, return_lse=False):
    import torch

    if return_lse:
        raise NotImplementedError("MHA v4 kernels do not produce LSE yet")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("mha_v4 expects BSHD Q, K, and V tensors")
    if any(t.dtype != torch.bfloat16 for t in (q, k, v)):
        raise ValueError("mha_v4 currently expects BF16 Q, K, and V inputs")
    if q.shape[-1] != 128 or k.shape[-1] != 128 or v.shape[-1] != 128:
        raise ValueError("mha_v4 currently supports head dimension 128 only")
    if q_format != k_format:
        raise ValueError("MHA v4 currently requires matching Q and K formats")
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError("mha_v4 currently requires contiguous BSHD inputs")
    if q.shape[2] != k.shape[2]:
        raise RuntimeError("MHA v4 initially supports MHA only; Q and KV heads must match")
    if (int(q_format), int(k_format), int(v_format)) not in _ROWS.get(GFX, set()):
        raise RuntimeError(f"no MHA v4 kernel for arch={GFX}, q_format={int(q_format)}, "
                           f"k_format={int(k_format)}, v_format={int(v_format)}")
    CALLS.append({"fn": "aiter.ops.mha_v4.mha_v4", "shapes": [tuple(t.shape) for t in (q, k, v)],
                  "formats": (AttentionFormat(q_format), AttentionFormat(k_format), AttentionFormat(v_format)),
                  "softmax_scale": softmax_scale, "return_lse": return_lse})
    result, _ = attend(q, k, v, softmax_scale, False)
    if out is not None:
        out.copy_(result)
        return out
    return result
