"""STAND-IN for AMD aiter's `aiter.flash_attn_func` (aiter/ops/mha.py): same signature and return rules."""

import sys

sys.path.insert(0, __file__.rsplit("/aiter/", 1)[0])
from _attention import attend  # noqa: E402

CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    bias=None, alibi_slopes=None, deterministic=True, return_lse=False, return_attn_probs=False,
                    how_v3_bf16_cvt=1, cu_seqlens_q=None, cu_seqlens_kv=None):
    CALLS.append({"fn": "aiter.flash_attn_func", "shapes": [tuple(t.shape) for t in (q, k, v)],
                  "softmax_scale": softmax_scale, "causal": causal, "return_lse": return_lse,
                  "return_attn_probs": return_attn_probs, "how_v3_bf16_cvt": how_v3_bf16_cvt,
                  "dropout_p": dropout_p})
    out, lse = attend(q, k, v, softmax_scale, causal)
    s_dmask = q.new_empty((0,))  # empty unless dropout > 0, as in aiter
    if return_lse and return_attn_probs:
        return out, lse, s_dmask
    if return_lse:
        return out, lse
    if return_attn_probs:
        return out, s_dmask
    return out
