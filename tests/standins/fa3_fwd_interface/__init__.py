"""STAND-IN for PyPI's fa3-fwd (`fa3_fwd_interface.flash_attn_func`, 0.0.3): FlashAttention-3's forward built without
fp16 kernels. Signature and return rule as the real module's; FP8 inputs (e4m3) are dequantised with the per
(batch, KV head) descales the real kernel reads, and the output is bf16 as the real FP8 kernel's is."""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/fa3_fwd_interface/", 1)[0])
from _attention import attend  # noqa: E402

CALLS = []


def _dequantised(x, descale):
    if x.dtype != torch.float8_e4m3fn:
        return x
    groups = x.shape[2] // descale.shape[1]
    per_head = descale.repeat_interleave(groups, dim=1) if groups > 1 else descale  # [B, H]
    return (x.float() * per_head[:, None, :, None]).to(torch.bfloat16)


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                    v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                    pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    CALLS.append({"fn": "fa3_fwd_interface.flash_attn_func", "softmax_scale": softmax_scale,
                  "return_attn_probs": return_attn_probs, "shapes": [tuple(t.shape) for t in (q, k, v)],
                  "dtypes": [t.dtype for t in (q, k, v)],
                  "descales": [None if d is None else (tuple(d.shape), d.dtype) for d in (q_descale, k_descale,
                                                                                          v_descale)]})
    if q.dtype == torch.float16:
        raise RuntimeError("stand-in: fa3-fwd is built without fp16 kernels")  # the real build has none
    if q.dtype == torch.float8_e4m3fn:
        kv_heads = k.shape[2]
        ones = torch.ones(q.shape[0], kv_heads)
        q, k, v = (_dequantised(t, ones if d is None else d) for t, d in ((q, q_descale), (k, k_descale),
                                                                          (v, v_descale)))
    out, lse = attend(q, k, v, softmax_scale, causal)
    return (out, lse) if return_attn_probs else out
