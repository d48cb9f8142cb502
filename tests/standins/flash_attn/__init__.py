"""STAND-IN for FlashAttention-2's `flash_attn.flash_attn_func`: signature and return tuple."""

import sys

sys.path.insert(0, __file__.rsplit("/flash_attn/", 1)[0])
from _attention import attend  # noqa: E402

CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    CALLS.append({"fn": "flash_attn.flash_attn_func", "softmax_scale": softmax_scale,
                  "return_attn_probs": return_attn_probs, "shapes": [tuple(t.shape) for t in (q, k, v)]})
    out, lse = attend(q, k, v, softmax_scale, causal)
    return (out, lse, None) if return_attn_probs else out
