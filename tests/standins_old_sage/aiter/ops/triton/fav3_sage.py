"""STAND-IN for the older `aiter.ops.triton.fav3_sage.fav3_sage_wrapper_func`: returns `out` only and,
like the original, ignores `softmax_scale` (always head_dim ** -0.5)."""

import sys

sys.path.insert(0, __file__.rsplit("/standins_old_sage/", 1)[0] + "/standins")
from _attention import attend  # noqa: E402

CALLS = []


def fav3_sage_wrapper_func(q, k, v, k_mean=None, softmax_scale=None, causal=False, qv=None, window_size=(-1, -1),
                           attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False,
                           sm_margin=0, inference_mode=True, layout="bshd", config=None):
    CALLS.append({"fn": "old fav3_sage_wrapper_func", "softmax_scale": softmax_scale, "layout": layout})
    out, _ = attend(q, k, v, None, causal)  # the scale argument is ignored, as in the original
    return out
