"""The emulators as first written (fluxlab/backends/emulated.py at commit 0539d04): one key block at a time, every
intermediate a fresh tensor. Kept only as the reference that tests/test_emulators.py compares the fast vectorised
emulators with, bit for bit; not part of the package.
"""

from __future__ import annotations

import math

import torch

from fluxlab import numerics
from fluxlab.backends.emulated import (  # unchanged by the speed-up: shared, not copied
    AITER_MIN_L, AITER_SAGE_BLOCKS, SAGE_BLOCKS, _aiter_sage_operands, _check_options,
    _exact_float32, _finish, _half_operands, _half_result, _sage_operands)

# float32 scores held at once per query chunk (x 4 bytes, plus exp()).
SCORE_BUDGET_ELEMENTS = 2**25


# ------------------------------------------------------------------------------------------ shared pieces


def _chunk_rows(batch_heads: int, seq_q: int, block: int, multiple: int) -> int:
    rows = max(1, SCORE_BUDGET_ELEMENTS // max(1, batch_heads * block))
    rows = max(multiple, rows // multiple * multiple)
    return min(seq_q, rows)


def _online_softmax(q_len: int, k_len: int, batch_heads: tuple[int, int], v: torch.Tensor, *, scores, block_n: int,
                    exp, pv, causal: bool, row_multiple: int = 1):
    """A flash kernel's loop: for each query chunk, key blocks of ``block_n`` (0: all keys at once) with a
    running max ``m``, ``p = exp(s - m)``, ``l += rowsum(p)`` (float32 p), ``acc = acc * alpha + pv(p, v_block)``.

    ``scores(rows, cols)`` returns float32 [B, H, r, c] and may return ``(s, m_candidate)`` when the kernel
    takes the block max in another form; ``pv(p, v_block)`` rounds ``p`` as the kernel does. Returns
    float32 ``acc`` [B, H, Sq, Dv], ``l`` and ``m`` [B, H, Sq].
    """
    batch, heads = batch_heads
    block = block_n if block_n > 0 else k_len
    rows = _chunk_rows(batch * heads, q_len, block, row_multiple)
    acc = torch.empty(batch, heads, q_len, v.shape[-1], dtype=torch.float32, device=v.device)
    l_all = torch.empty(batch, heads, q_len, dtype=torch.float32, device=v.device)
    m_all = torch.empty_like(l_all)
    for r0 in range(0, q_len, rows):
        r1 = min(q_len, r0 + rows)
        m = torch.full((batch, heads, r1 - r0), -math.inf, dtype=torch.float32, device=v.device)
        l = torch.zeros_like(m)
        out = torch.zeros(batch, heads, r1 - r0, v.shape[-1], dtype=torch.float32, device=v.device)
        for c0 in range(0, k_len, block):
            c1 = min(k_len, c0 + block)
            s = scores(slice(r0, r1), slice(c0, c1))
            shifted = None
            if isinstance(s, tuple):  # (a function of m giving the shifted scores, the block's row max)
                shifted, block_max = s
            else:
                if causal:
                    keep = torch.arange(c0, c1, device=v.device)[None, :] <= torch.arange(r0, r1, device=v.device)[:, None]
                    s = s.masked_fill(~keep, -math.inf)
                block_max = s.amax(dim=-1)
            m_new = torch.maximum(m, block_max)
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = shifted(m_safe) if shifted is not None else exp(s - m_safe[..., None])
            alpha = exp(m - m_safe)
            l = l * alpha + p.sum(dim=-1)
            out = out * alpha[..., None] + pv(p, v[:, :, c0:c1])
            m = m_new
        acc[:, :, r0:r1], l_all[:, :, r0:r1], m_all[:, :, r0:r1] = out, l, m
    return acc, l_all, m_all


def _fp32_pv(round_p):
    def pv(p, v_block):
        return torch.matmul(round_p(p), v_block)
    return pv


# ----------------------------------------------------------------------------------------- exact (bf16)


def _bf16_flash(q, k, v, *, scale, causal, return_lse, probs, block_n, probs_mode, out_mode):
    _check_options(probs=(probs, {"bf16", "fp32"}))
    work, qh, kh, vh = _half_operands(q, k, v)
    batch, heads, q_len, _ = qh.shape
    if probs == "bf16":
        def round_p(p):
            return numerics.round_bf16(p, probs_mode) if work == torch.bfloat16 else numerics.round_fp16(p)
    else:
        def round_p(p):
            return p

    def scores(rows, cols):
        return torch.matmul(qh[:, :, rows], kh[:, :, cols].transpose(-1, -2)) * scale

    with _exact_float32(q.device):
        acc, l, m = _online_softmax(q_len, kh.shape[2], (batch, heads), vh, scores=scores, block_n=int(block_n),
                                    exp=torch.exp, pv=_fp32_pv(round_p), causal=causal)
    return _half_result(acc, l, m, work=work, out_mode=out_mode, dtype=q.dtype, return_lse=return_lse)


# ------------------------------------------------------------------------------------------- quantised


def emu_bf16(q, k, v, *, scale, causal=False, return_lse=False, probs="bf16", block_n=0):
    return _bf16_flash(q, k, v, scale=scale, causal=causal, return_lse=return_lse, probs=probs,
                       block_n=block_n, probs_mode=numerics.RTNE, out_mode=numerics.RTNE)


def emu_aiter(q, k, v, *, scale, causal=False, return_lse=False, how_v3_bf16_cvt=1, cvt_probs=1, block_n=0):
    mode = numerics.bf16_mode(how_v3_bf16_cvt)
    _check_options(cvt_probs=(cvt_probs, {0, 1, True, False}))
    return _bf16_flash(q, k, v, scale=scale, causal=causal, return_lse=return_lse, probs="bf16",
                       block_n=block_n, probs_mode=mode if cvt_probs else numerics.RTNE, out_mode=mode)


def emu_sage(q, k, v, *, scale, causal=False, return_lse=False, pv_chunk=16):
    """fluxlab.backends.emulated.emu_sage, one key block at a time."""
    _check_options(pv_chunk=(pv_chunk, {1, 2, 4, 8, 16, 32, 64}))
    work, q_ints, q_row_scale, k_ints, k_col_scale, vh = _sage_operands(q, k, v, scale=scale)
    q_len, k_len = q.shape[1], k.shape[1]
    tail = -k_len % SAGE_BLOCKS["k"]
    if tail and not causal:  # 1.0.6's non-causal kernel: the last block's missing keys enter as zero keys
        k_ints = torch.nn.functional.pad(k_ints, (0, 0, 0, tail))
        k_col_scale = torch.nn.functional.pad(k_col_scale, (0, tail), value=1.0)
        vh = torch.nn.functional.pad(vh, (0, 0, 0, tail))
        k_len += tail

    def scores(rows, cols):
        qk = torch.matmul(q_ints[:, :, rows], k_ints[:, :, cols].transpose(-1, -2))
        return qk * q_row_scale[:, :, rows, None] * k_col_scale[:, :, None, cols]

    def pv(p, v_block):
        keys = p.shape[-1]
        chunks = -(-keys // pv_chunk)
        if chunks * pv_chunk != keys:  # a ragged last block: zero keys add nothing
            p = torch.nn.functional.pad(p, (0, chunks * pv_chunk - keys))
            v_block = torch.nn.functional.pad(v_block, (0, 0, 0, chunks * pv_chunk - keys))
        p16 = numerics.round_fp16(p).unflatten(-1, (chunks, pv_chunk)).transpose(-2, -3)  # [B, H, n, r, c]
        parts = torch.matmul(p16, v_block.unflatten(-2, (chunks, pv_chunk)))  # [B, H, n, r, D], float32 each
        block = numerics.round_fp16(parts[:, :, 0])
        for index in range(1, chunks):  # the fp16 accumulator, one rounding per MMA k-step
            block = numerics.round_fp16(block + parts[:, :, index])
        return block

    with _exact_float32(q.device):
        acc, l, _ = _online_softmax(q_len, k_len, q_ints.shape[:2], vh, scores=scores, block_n=SAGE_BLOCKS["k"],
                                    exp=torch.exp2, pv=pv, causal=causal, row_multiple=SAGE_BLOCKS["q"])
    out = (acc / l[..., None]).to(work).float()
    result = _finish(out, q.dtype)
    if return_lse:
        raise ValueError("emu_sage does not return the log-sum-exp (sageattn 1.0.6 does not)")
    return result


def emu_aiter_sage(q, k, v, *, scale, causal=False, return_lse=False, fp8="e4m3fnuz"):
    """fluxlab.backends.emulated.emu_aiter_sage, one key block at a time."""
    q_ints, q_row_scale, k_ints, k_scales, v_q, v_scales = _aiter_sage_operands(q, k, v, scale=scale, fp8=fp8)
    q_len, k_len = q.shape[1], k.shape[1]
    block_n = AITER_SAGE_BLOCKS["k"]

    def scores(rows, cols):
        qk = torch.matmul(q_ints[:, :, rows], k_ints[:, :, cols].transpose(-1, -2))
        block_scale = q_row_scale[:, :, rows] * k_scales[:, :, cols.start // block_n, None]  # fp32 product
        if causal:
            keep = (torch.arange(cols.start, cols.stop, device=qk.device)[None, :]
                    <= torch.arange(rows.start, rows.stop, device=qk.device)[:, None])
            qk = qk.masked_fill(~keep, -math.inf)
        row_max = qk.amax(dim=-1) * block_scale

        def shifted(m):  # one fused multiply-add: the product is exact in float64, one rounding to float32
            return torch.exp2((qk.double() * block_scale.double()[..., None] - m.double()[..., None]).float())

        return shifted, row_max

    def pv(p, v_block):
        return torch.matmul(numerics.round_fp8(p, fp8), v_block)

    with _exact_float32(q.device):
        acc, l, _ = _online_softmax(q_len, k_len, q_ints.shape[:2], v_q, scores=scores, block_n=block_n,
                                    exp=torch.exp2, pv=pv, causal=causal, row_multiple=AITER_SAGE_BLOCKS["q"])
    reciprocal = 1.0 / torch.clamp(l, min=AITER_MIN_L)
    out = numerics.round_bf16(acc * reciprocal[..., None] * v_scales[:, :, None, :])
    result = _finish(out, q.dtype)
    if return_lse:
        raise ValueError("emu_aiter_sage does not return the log-sum-exp (fluxlab's aiter_sage does not ask for it)")
    return result
