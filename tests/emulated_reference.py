"""The emulators as first written (fluxlab/backends/emulated.py at commit 0539d04): one key block at a time, every
intermediate a fresh tensor. Kept only as the reference that tests/test_emulators.py compares the fast vectorised
emulators with, bit for bit; not part of the package.
"""

from __future__ import annotations

import contextlib
import math

import torch

from fluxlab import numerics

# float32 scores held at once per query chunk (x 4 bytes, plus exp()).
SCORE_BUDGET_ELEMENTS = 2**25
SAGE_BLOCKS = {"q": 128, "k": 64}  # SageAttention 1.0.6 per_block_int8 and attn kernel, head_dim 64/128
AITER_SAGE_BLOCKS = {"q": 256, "k": 128}  # aiter get_sage_fwd_configs (gfx942 and gfx950)
SAGE_LOG2E = 1.44269504  # the constant as written in sageattention 1.0.6 (not math.log2(math.e))
AITER_LOG2E = 1.4426950408889634
AITER_MIN_L = 1e-7
# The real Sage kernels take head_dim 64/96/128 (sage) or 64/128 (aiter_sage); their algorithm does not depend on it,
# so the emulators run any head_dim whose int8 Q.K stays exact in float32 (D x 127^2 < 2^24), e.g. the embedded
# model's 32. A result at another head_dim is the algorithm's, at a size the real kernel refuses.
EMULATED_MAX_HEAD_DIM = 256


# ------------------------------------------------------------------------------------------ shared pieces


@contextlib.contextmanager
def _exact_float32(device: torch.device):
    """float32 matmuls without TF32 on CUDA (a global torch setting a user may have switched on)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The half dtype the emulated kernel receives: the input's own, or bf16 for float32/float64 inputs."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def _heads_first(x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    x = x.transpose(1, 2)
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


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


def _lse(m, l, base2: bool = False):
    lse = m + torch.log2(l) if base2 else m + torch.log(l)
    return lse * math.log(2) if base2 else lse


def _finish(out_rounded: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, S, D] float32 holding the kernel's output values -> [B, S, H, D] in the input dtype."""
    return out_rounded.transpose(1, 2).to(dtype)


def _check_options(**choices):
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"option {name}={value!r} is not one of {sorted(allowed, key=str)}")


# ----------------------------------------------------------------------------------------- exact (bf16)


def _bf16_flash(q, k, v, *, scale, causal, return_lse, probs, block_n, probs_mode, out_mode):
    _check_options(probs=(probs, {"bf16", "fp32"}))
    groups = q.shape[2] // k.shape[2]
    work = _work_dtype(q.dtype)

    def load(x, g=1):
        return _heads_first(x.to(work).float(), g)  # the bf16 (or fp16) values the kernel receives

    qh, kh, vh = load(q), load(k, groups), load(v, groups)
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
    out = acc / l[..., None]
    out = numerics.round_bf16(out, out_mode) if work == torch.bfloat16 else numerics.round_fp16(out)
    result = _finish(out, q.dtype)
    return (result, _lse(m, l)) if return_lse else result


def emu_bf16(q, k, v, *, scale, causal=False, return_lse=False, probs="bf16", block_n=0):
    """A bf16 flash kernel in float32: bf16 q/k/v, float32 scores and softmax, ``p = exp(s - m)`` rounded to bf16
    (``probs="fp32"`` keeps it) before a float32 ``P.V``, output rounded to nearest even. ``block_n`` > 0 runs the
    online softmax over key blocks of that size (p rounded relative to the running max), 0 over all keys."""
    return _bf16_flash(q, k, v, scale=scale, causal=causal, return_lse=return_lse, probs=probs,
                       block_n=block_n, probs_mode=numerics.RTNE, out_mode=numerics.RTNE)


def emu_aiter(q, k, v, *, scale, causal=False, return_lse=False, how_v3_bf16_cvt=1, cvt_probs=1, block_n=0):
    """aiter's assembly flash kernel as far as its documented numerics go: ``emu_bf16`` with the bf16
    conversions done by ``how_v3_bf16_cvt`` (0 RTNE, 1 RTNA = aiter's default, 2 RTZ), bit-exact; P too unless
    ``cvt_probs=0``."""
    mode = numerics.bf16_mode(how_v3_bf16_cvt)
    _check_options(cvt_probs=(cvt_probs, {0, 1, True, False}))
    return _bf16_flash(q, k, v, scale=scale, causal=causal, return_lse=return_lse, probs="bf16",
                       block_n=block_n, probs_mode=mode if cvt_probs else numerics.RTNE, out_mode=mode)


# ------------------------------------------------------------------------------------------- quantised


def _smoothed_k(k: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """K minus its per-head token mean, computed in the kernel's input dtype as both Sage wrappers do."""
    k_work = k.to(work)
    return k_work - k_work.mean(dim=1, keepdim=True)


def _int8_operands(q, k, *, scale, log2e, blocks, work):
    """Q (scaled by scale*log2e) and smoothed K as int8 blocks: integers (float32), per-token scales."""
    multiplier = torch.tensor(scale * log2e, dtype=torch.float32).item()  # the fp32 scalar the kernel gets
    q_ints, q_scales = numerics.quantise_int8_per_block(q.to(work).float().transpose(1, 2), blocks["q"],
                                                        multiplier=multiplier)
    k_ints, k_scales = numerics.quantise_int8_per_block(_smoothed_k(k, work).float().transpose(1, 2), blocks["k"])
    return q_ints, q_scales, k_ints, k_scales


def emu_sage(q, k, v, *, scale, causal=False, return_lse=False, pv_chunk=16):
    """SageAttention 1.0.6's Triton kernel in float32 (algorithm: module docstring).

    Q·K is exact (integers below 2^24: 128 x 127 x 127 = 2,064,512 at head_dim 128), descaled as
    ``(qk * q_scale) * k_scale``; exp2 online softmax over blocks of 64 keys; ``p`` to fp16; each block's
    ``P.V`` accumulated in fp16 (rounded after every ``pv_chunk`` keys: the fp16-accumulating MMA's k-step,
    an assumed point) and added to a float32 accumulator; output in the input's half dtype.
    """
    _check_options(pv_chunk=(pv_chunk, {1, 2, 4, 8, 16, 32, 64}))
    work = _work_dtype(q.dtype)
    groups = q.shape[2] // k.shape[2]
    q_ints, q_scales, k_ints, k_scales = _int8_operands(q, k, scale=scale, log2e=SAGE_LOG2E, blocks=SAGE_BLOCKS,
                                                        work=work)
    q_len, k_len = q.shape[1], k.shape[1]
    q_row_scale = numerics.expand_block_scales(q_scales, SAGE_BLOCKS["q"], q_len)
    k_col_scale = numerics.expand_block_scales(k_scales, SAGE_BLOCKS["k"], k_len)
    if groups > 1:
        k_ints, k_col_scale = k_ints.repeat_interleave(groups, 1), k_col_scale.repeat_interleave(groups, 1)
    vh = _heads_first(v.to(work).to(torch.float16).float(), groups)

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
    """aiter's fav3 Sage kernel (``fav3_sage_wrapper_func``) in float32 (algorithm: module docstring).

    int8 Q (blocks of 256 tokens, ``sm_scale * log2e`` folded in) and mean-smoothed K (blocks of 128); V in
    fp8 with one scale per channel over the whole sequence (``fp8``: ``e4m3fnuz`` on MI300/gfx942, ``e4m3fn``
    on gfx950); ``fma(qk, q_descale * k_descale, -m)``, exp2, ``p`` cast to fp8 (unscaled) before a float32
    ``P.V``; ``acc / l * v_descale`` rounded to bf16 (the kernel's output dtype, whatever the input's).
    """
    numerics.fp8_dtype(fp8)
    work = _work_dtype(q.dtype)
    groups = q.shape[2] // k.shape[2]
    q_ints, q_scales, k_ints, k_scales = _int8_operands(q, k, scale=scale, log2e=AITER_LOG2E,
                                                        blocks=AITER_SAGE_BLOCKS, work=work)
    q_len, k_len = q.shape[1], k.shape[1]
    q_row_scale = numerics.expand_block_scales(q_scales, AITER_SAGE_BLOCKS["q"], q_len)
    v_work = v.to(work).transpose(1, 2)
    fp8_max = torch.finfo(numerics.fp8_dtype(fp8)).max
    v_scales = v_work.abs().amax(dim=-2).float() / fp8_max
    v_scales = torch.where(v_scales > 0, v_scales, torch.ones_like(v_scales))
    v_q = numerics.round_fp8(v_work.float() / v_scales[..., None, :], fp8)
    if groups > 1:
        k_ints, k_scales = k_ints.repeat_interleave(groups, 1), k_scales.repeat_interleave(groups, 1)
        v_q, v_scales = v_q.repeat_interleave(groups, 1), v_scales.repeat_interleave(groups, 1)
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
