"""STAND-IN for `aiter.ops.triton.attention.fav3_sage.fav3_sage_wrapper_func` (current aiter)."""

from _attention import attend

CALLS = []


def fav3_sage_wrapper_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), attention_chunk=0,
                           softcap=0.0, deterministic=False, sm_margin=0, return_lse=False, layout="bshd",
                           config=None, block_lut=None, smooth_k=True, freeze_softmax_max_count=-1):
    CALLS.append({"fn": "fav3_sage_wrapper_func", "softmax_scale": softmax_scale, "layout": layout,
                  "return_lse": return_lse, "shapes": [tuple(t.shape) for t in (q, k, v)]})
    if layout != "bshd":
        raise ValueError("stand-in only models layout='bshd'")
    out, lse = attend(q, k, v, softmax_scale, causal)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
