"""The exact answer: attention in float64, chunked over queries so an S x S matrix never exists."""

from __future__ import annotations

import torch

from .base import FLOAT_DTYPES, Backend, Capabilities

# Elements of float64 scores held at once per chunk (2**26 x 8 bytes = 512 MiB, plus its exp()).
SCORE_BUDGET_ELEMENTS = 2**26


def reference_attention(q, k, v, *, scale, causal=False, return_lse=False, out_dtype=torch.float64,
                        budget_elements=SCORE_BUDGET_ELEMENTS):
    """Float64 attention on ``[B, S, H, D]`` inputs; returns ``out`` (and natural-log ``lse`` [B,H,S]).

    Queries are processed in chunks sized so that one chunk's scores fit ``budget_elements``.
    """
    batch, seq_q, heads, _ = q.shape
    kv_heads, seq_k = k.shape[2], k.shape[1]
    groups = heads // kv_heads
    k64, v64 = (t.to(torch.float64).transpose(1, 2) for t in (k, v))  # [B, Hkv, Sk, D]
    if groups > 1:
        k64, v64 = k64.repeat_interleave(groups, dim=1), v64.repeat_interleave(groups, dim=1)
    chunk = max(1, min(seq_q, budget_elements // max(1, batch * heads * seq_k)))
    out = torch.empty(batch, seq_q, heads, v.shape[-1], dtype=out_dtype, device=q.device)
    lse = torch.empty(batch, heads, seq_q, dtype=torch.float32, device=q.device) if return_lse else None
    for start in range(0, seq_q, chunk):
        stop = min(seq_q, start + chunk)
        q64 = q[:, start:stop].to(torch.float64).transpose(1, 2)  # [B, H, c, D]
        scores = torch.matmul(q64, k64.transpose(-1, -2)) * scale
        if causal:  # the dispatcher allows causal only for seq_q == seq_k, where all kernels agree
            rows = torch.arange(start, stop, device=q.device)[:, None]
            cols = torch.arange(seq_k, device=q.device)[None, :]
            scores.masked_fill_(cols > rows, float("-inf"))
        chunk_lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - chunk_lse)
        del scores
        out[:, start:stop] = torch.matmul(probs, v64).transpose(1, 2).to(out_dtype)
        if return_lse:
            lse[:, :, start:stop] = chunk_lse.squeeze(-1).float()
    return (out, lse) if return_lse else out


def _reference_backend(q, k, v, *, scale, causal=False, return_lse=False):
    return reference_attention(q, k, v, scale=scale, causal=causal, return_lse=return_lse, out_dtype=q.dtype)


BACKENDS = [
    Backend("reference", _reference_backend,
            Capabilities(vendors=frozenset({"nvidia", "amd", "cpu", "other"}), dtypes=FLOAT_DTYPES,
                         returns_lse=True, lse_grad=True),  # plain torch ops: autograd differentiates the LSE
            "exact float64 attention, chunked over queries (slow; the yardstick for every comparison)",
            aliases=("float64",)),
]
