"""STAND-IN for `aiter.ops.triton.attention.fav3_sage_attention_mxfp4_wrapper.fav3_sage_mxfp4_wrapper`
(ROCm/aiter e4048607a535): its signature, its refusal of hadamard_rotation=False, head_dim ** -0.5 as the
softmax scale (it takes none), (out, lse) with return_lse."""

from _attention import attend

CALLS = []


def fav3_sage_mxfp4_wrapper(q, k, v, causal, layout="bshd", q_smooth=False, hadamard_rotation=False, config=None,
                            R=None, BLOCK_R=128, block_lut=None, return_lse=False, smooth_k=True):
    assert hadamard_rotation, "hadamard_rotation=False not supported at the moment"
    CALLS.append({"fn": "fav3_sage_mxfp4_wrapper", "layout": layout, "causal": causal,
                  "hadamard_rotation": hadamard_rotation, "return_lse": return_lse,
                  "shapes": [tuple(t.shape) for t in (q, k, v)]})
    if layout != "bshd":
        raise ValueError("stand-in only models layout='bshd'")
    out, lse = attend(q, k, v, None, causal)
    return (out, lse) if return_lse else out
