"""STAND-IN for FlashAttention-3's `flash_attn_interface.flash_attn_func` (recent releases)."""

import sys

sys.path.insert(0, __file__.rsplit("/flash_attn_interface/", 1)[0])
from _attention import attend  # noqa: E402

CALLS = []


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                    v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                    pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    CALLS.append({"fn": "flash_attn_interface.flash_attn_func", "softmax_scale": softmax_scale,
                  "return_attn_probs": return_attn_probs, "shapes": [tuple(t.shape) for t in (q, k, v)]})
    out, lse = attend(q, k, v, softmax_scale, causal)
    return (out, lse) if return_attn_probs else out
