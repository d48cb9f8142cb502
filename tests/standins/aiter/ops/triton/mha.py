"""STAND-IN for `aiter.ops.triton.mha.flash_attn_func` (aiter's Triton MHA): signature and return rules."""

from _attention import attend

CALLS = []


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    bias=None, alibi_slopes=None, deterministic=True, return_lse=False, return_attn_probs=False,
                    config=None, sink=None):
    CALLS.append({"fn": "aiter.ops.triton.mha.flash_attn_func", "softmax_scale": softmax_scale,
                  "return_lse": return_lse, "config": config, "shapes": [tuple(t.shape) for t in (q, k, v)]})
    out, lse = attend(q, k, v, softmax_scale, causal)
    result = (out,) + ((lse,) if return_lse else ()) + ((None,) if return_attn_probs else ())
    return result if len(result) > 1 else out
