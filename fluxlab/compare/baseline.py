"""The yardstick: torch's SDPA math kernel in the inputs' dtype (float32 inside), chunked over queries.
Queries are independent, so chunking changes nothing but memory; half-precision reductions are switched off.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BASELINE_NAME = "torch SDPA math, same dtype"
BUDGET_ELEMENTS = 2**26  # float32 scores held per chunk (256 MiB)


@contextlib.contextmanager
def _full_precision_math():
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def baseline_attention(q, k, v, *, scale, causal=False, budget_elements=None):
    """``[B, S, H, D]`` attention by torch's math kernel in ``q.dtype``; one query chunk at a time."""
    budget_elements = BUDGET_ELEMENTS if budget_elements is None else budget_elements
    batch, seq_q, heads, _ = q.shape
    seq_k = k.shape[1]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    gqa = {"enable_gqa": True} if qh.shape[1] != kh.shape[1] else {}
    chunk = max(1, min(seq_q, budget_elements // max(1, batch * heads * seq_k)))
    out = torch.empty(batch, heads, seq_q, v.shape[-1], dtype=q.dtype, device=q.device)
    with _full_precision_math(), sdpa_kernel(SDPBackend.MATH):
        for start in range(0, seq_q, chunk):
            stop = min(seq_q, start + chunk)
            mask = None
            if causal:
                rows = torch.arange(start, stop, device=q.device)[:, None]
                mask = torch.arange(seq_k, device=q.device)[None, :] <= rows
            out[:, :, start:stop] = F.scaled_dot_product_attention(qh[:, :, start:stop], kh, vh, attn_mask=mask,
                                                                   scale=scale, **gqa)
    return out.transpose(1, 2)
