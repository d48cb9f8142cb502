"""Emulated kernels: the rounding and quantisation points of bf16 flash, AMD aiter and Sage kernels,
reproduced in float32 on any device. Each names the real backend it models; none is picked automatically.

Every emulator takes any float input dtype, computes in float32 from the values the real kernel would see
(float32 inputs are first rounded to bf16, as a bf16 pipeline would hand them over), and returns the real
kernel's bf16 (or fp16) output values in the input dtype: float32 in, bf16-valued float32 out. That is what
makes a CPU lab realistic at float32 speed.

Where each algorithm comes from (read, not copied) and how it is validated: docs/emulators.md.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from .. import numerics
from ..errors import InvalidBackendSpecError
from .aiter import BF16_ROUNDING_MODES
from .base import FLOAT_DTYPES, Backend, Capabilities

# float32 scores held at once per chunk of query rows: a CPU's cache-sized share (a fresh tensor costs page faults and
# a pass over memory there), a GPU's few GiB (each chunk is a round of kernel launches).
SCORE_BUDGET_ELEMENTS = {"cpu": 2**20, "cuda": 2**28}
SAGE_BLOCKS = {"q": 128, "k": 64}  # SageAttention 1.0.6 per_block_int8 and attn kernel, head_dim 64/128
AITER_SAGE_BLOCKS = {"q": 256, "k": 128}  # aiter get_sage_fwd_configs (gfx942 and gfx950)
SAGE_LOG2E = 1.44269504  # the constant as written in sageattention 1.0.6 (not math.log2(math.e))
AITER_LOG2E = 1.4426950408889634
AITER_MIN_L = 1e-7
ALL_VENDORS = frozenset({"nvidia", "amd", "cpu", "other"})
# The real Sage kernels take head_dim 64/96/128 (sage) or 64/128 (aiter_sage); their algorithm does not depend on it,
# so the emulators run any head_dim whose int8 Q.K stays exact in float32 (D x 127^2 < 2^24), e.g. the embedded
# model's 32. A result at another head_dim is the algorithm's, at a size the real kernel refuses.
EMULATED_MAX_HEAD_DIM = 256


@contextlib.contextmanager
def _exact_float32(device: torch.device):
    """float32 matmuls without TF32 on CUDA (a global torch setting a user may have switched on)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = before and device.type != "cuda"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The half dtype the emulated kernel receives: the input's own, or bf16 for float32/float64 inputs."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def _repeat_heads(groups: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each [B, Hkv, ...] tensor with every KV head repeated for the ``groups`` query heads that share it (GQA)."""
    return tuple(t.repeat_interleave(groups, dim=1) if groups > 1 else t for t in tensors)


def _heads_first(x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    return _repeat_heads(groups, x.transpose(1, 2))[0]


def _chunk_rows(batch_heads: int, seq_q: int, width: int, multiple: int, device: torch.device) -> int:
    budget = SCORE_BUDGET_ELEMENTS.get(device.type, SCORE_BUDGET_ELEMENTS["cuda"])
    rows = max(1, budget // max(1, batch_heads * width))
    rows = max(multiple, rows // multiple * multiple)
    return min(seq_q, rows)


def _flash_rows(logits: torch.Tensor, v: torch.Tensor, rows: slice, *, block: int, exp, block_max, probs, round_p,
                add_pv):
    """A flash kernel's loop over key blocks for one chunk of query rows: running max ``m``, ``p = exp(s - m)``
    (float32), ``l = l * alpha + rowsum(p)``, ``acc = acc * alpha + P.V`` with ``add_pv(acc, round_p(p), v_block)``.

    The bits of one block at a time; only what no value depends on (scores, block maxima, ``p``, its row sums) is
    vectorised over the blocks, the sequential steps run block by block (docs/emulators.md, "Cost").
    ``block_max(x, rows, blocks)`` and ``probs(x, m_safe, rows, blocks)`` get ``x`` [B, H, r, n, block] for the full
    blocks (``blocks`` a slice) or [B, H, r, keys] for a ragged last one (``blocks`` its index) and return the block
    maxima and a fresh ``p``; ``round_p(p)`` rounds in place. Returns float32 ``acc`` [B, H, r, Dv], ``l``, ``m``.
    """
    batch, heads, row_count, k_len = logits.shape
    full, ragged = divmod(k_len, block)
    parts = [(logits[..., :full * block].unflatten(-1, (full, block)), slice(0, full))] if full else []
    if ragged:
        parts.append((logits[..., full * block:], full))
    maxima = [block_max(x, rows, blocks) for x, blocks in parts]
    if ragged:
        maxima[-1] = maxima[-1].unsqueeze(-1)
    m_cols = torch.cummax(torch.cat(maxima, dim=-1), dim=-1).values.movedim(-1, 0).contiguous()  # [n, B, H, r]
    m_safe = torch.where(torch.isfinite(m_cols), m_cols, torch.zeros_like(m_cols))
    p_blocks, sums = [], []
    for x, blocks in parts:
        full_part = isinstance(blocks, slice)
        p = probs(x, m_safe[blocks].movedim(0, -1) if full_part else m_safe[blocks], rows, blocks)
        sums.append(p.sum(dim=-1))
        round_p(p)
        p_blocks += list(p.unbind(dim=-2)) if full_part else [p]  # [B, H, r, block] views of p
    sums = torch.cat([sums[0]] + [s.unsqueeze(-1) for s in sums[1:]], dim=-1) if full else sums[0].unsqueeze(-1)
    m = torch.full((batch, heads, row_count), -math.inf, dtype=torch.float32, device=v.device)
    l = torch.zeros_like(m)
    acc = torch.zeros(batch, heads, row_count, v.shape[-1], dtype=torch.float32, device=v.device)
    for index, p in enumerate(p_blocks):
        alpha = exp(m - m_safe[index])
        l = l * alpha + sums[..., index]
        add_pv(acc.mul_(alpha[..., None]), p, v[:, :, index * block:(index + 1) * block])
        m = m_cols[index]
    return acc, l, m


def _flash(q_len: int, v: torch.Tensor, *, logits, block_n: int, exp, causal: bool, row_multiple: int = 1, **loop):
    """``_flash_rows`` over chunks of query rows, without TF32; ``v`` [B, H, Sk, Dv]; ``logits(rows)`` gives
    [B, H, r, Sk] float32 (masked here when ``causal``), ``loop`` the rest of ``_flash_rows``' arguments. Returns
    ``acc`` [B, H, Sq, Dv], ``l``, ``m``."""
    batch, heads, k_len, _ = v.shape
    rows = _chunk_rows(batch * heads, q_len, k_len, row_multiple, v.device)
    acc = torch.empty(batch, heads, q_len, v.shape[-1], dtype=torch.float32, device=v.device)
    l_all = torch.empty(batch, heads, q_len, dtype=torch.float32, device=v.device)
    m_all = torch.empty_like(l_all)
    block = block_n if block_n > 0 else k_len
    with _exact_float32(v.device):
        for r0 in range(0, q_len, rows):
            r1 = min(q_len, r0 + rows)
            s = logits(slice(r0, r1))
            if causal:
                keep = torch.arange(k_len, device=v.device)[None, :] <= torch.arange(r0, r1, device=v.device)[:, None]
                s.masked_fill_(~keep, -math.inf)
            acc[:, :, r0:r1], l_all[:, :, r0:r1], m_all[:, :, r0:r1] = _flash_rows(s, v, slice(r0, r1), block=block,
                                                                                   exp=exp, **loop)
    return acc, l_all, m_all


def _row_max(x, rows, blocks):
    return x.amax(dim=-1)


def _keep(p):
    return p


def _exp_shifted(exp):
    def probs(x, m_safe, rows, blocks):
        return exp(x - m_safe[..., None])
    return probs


def _add_matmul(acc, p, v_block):
    """``acc += p @ v_block`` as one ``baddbmm``: BLAS sums the products from zero and adds ``acc`` once, the rounding
    of a separate float32 add, without a fresh tensor per block (tests check the bits against the separate add)."""
    acc.flatten(0, 1).baddbmm_(p.flatten(0, 1), v_block.flatten(0, 1))


def _finish(out_rounded: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, H, S, D] float32 holding the kernel's output values -> [B, S, H, D] in the input dtype."""
    return out_rounded.transpose(1, 2).to(dtype)


def _check_options(**choices):
    """For direct calls of the kernel functions (a spec is checked when parsed, by the backends' option_values)."""
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise InvalidBackendSpecError(f"option {name}={value!r} is not one of {sorted(allowed, key=str)}")


def _half_operands(q, k, v):
    """The bf16 (or fp16) values a half-precision kernel receives, in float32, heads first, K/V repeated for
    grouped-query attention; and that half dtype."""
    groups = q.shape[2] // k.shape[2]
    work = _work_dtype(q.dtype)
    return (work, _heads_first(q.to(work).float()), _heads_first(k.to(work).float(), groups),
            _heads_first(v.to(work).float(), groups))


def _half_result(acc, l, m, *, work, out_mode, dtype, return_lse):
    """``acc / l`` rounded to the half dtype ``work`` (bf16 by ``out_mode``), as [B, S, H, D] in ``dtype``, with the
    natural-log LSE when asked."""
    out = acc / l[..., None]
    out = numerics.round_bf16(out, out_mode) if work == torch.bfloat16 else numerics.round_fp16(out)
    result = _finish(out, dtype)
    return (result, m + torch.log(l)) if return_lse else result


def _bf16_flash(q, k, v, *, scale, causal, return_lse, probs, block_n, probs_mode, out_mode):
    _check_options(probs=(probs, {"bf16", "fp32"}))
    work, qh, kh, vh = _half_operands(q, k, v)
    if probs == "fp32":
        round_p = _keep
    elif work == torch.bfloat16:
        round_p = functools.partial(numerics.round_bf16_, mode=probs_mode)
    else:
        round_p = numerics.round_fp16_

    def logits(rows):
        return torch.matmul(qh[:, :, rows], kh.transpose(-1, -2)).mul_(scale)

    acc, l, m = _flash(qh.shape[2], vh, logits=logits, block_n=int(block_n), exp=torch.exp, causal=causal,
                       block_max=_row_max, probs=_exp_shifted(torch.exp), round_p=round_p, add_pv=_add_matmul)
    return _half_result(acc, l, m, work=work, out_mode=out_mode, dtype=q.dtype, return_lse=return_lse)


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


def _int8_operands(q, k, *, scale, log2e, blocks, work):
    """Q (scaled by scale*log2e) and smoothed K as int8 blocks: integers (float32), per-token scales."""
    multiplier = torch.tensor(scale * log2e, dtype=torch.float32).item()  # the fp32 scalar the kernel gets
    q_ints, q_scales = numerics.quantise_int8_per_block(q.to(work).float().transpose(1, 2), blocks["q"],
                                                        multiplier=multiplier)
    k_work = k.to(work)
    k_smooth = k_work - k_work.mean(dim=1, keepdim=True)  # in the kernel's input dtype, as both Sage wrappers do
    k_ints, k_scales = numerics.quantise_int8_per_block(k_smooth.float().transpose(1, 2), blocks["k"])
    return q_ints, q_scales, k_ints, k_scales


def _fp16_accumulated_pv(pv_chunk: int):
    """Sage's ``P.V`` for one key block: each chunk of ``pv_chunk`` keys' products summed in float32 and added to an
    fp16 accumulator, rounded to fp16 after each chunk (the add fused into ``baddbmm``, the same rounding as a
    separate add: the tests check it bit for bit)."""
    buffers = {}

    def add_pv(acc, p, v_block):
        keys = p.shape[-1]
        chunks = -(-keys // pv_chunk)
        if chunks * pv_chunk != keys:  # a ragged last block: zero keys add nothing
            p = torch.nn.functional.pad(p, (0, chunks * pv_chunk - keys))
            v_block = torch.nn.functional.pad(v_block, (0, 0, 0, chunks * pv_chunk - keys))
        batch, heads, row_count, dim = *p.shape[:-1], v_block.shape[-1]
        p3, v3 = p.flatten(0, 1), v_block.flatten(0, 1)  # [B*H, r, keys], [B*H, keys, D]
        shape = (batch * heads, row_count, dim)
        if shape not in buffers:
            buffers[shape] = (torch.empty(shape, dtype=torch.float32, device=p.device),
                              torch.empty(shape, dtype=torch.float16, device=p.device))
        block, half = buffers[shape]
        torch.bmm(p3[..., :pv_chunk], v3[:, :pv_chunk], out=block)
        block.copy_(half.copy_(block))
        for start in range(pv_chunk, chunks * pv_chunk, pv_chunk):  # one fp16 rounding per MMA k-step
            block.baddbmm_(p3[..., start:start + pv_chunk], v3[:, start:start + pv_chunk])
            block.copy_(half.copy_(block))
        acc.add_(block.view(batch, heads, row_count, dim))

    return add_pv


def _sage_operands(q, k, v, *, scale):
    """int8 Q and smoothed K with per-row / per-column scales and fp16 V, heads first, K/V repeated for
    grouped-query attention: what SageAttention 1.0.6's wrapper hands its kernel (and the work dtype)."""
    work = _work_dtype(q.dtype)
    groups = q.shape[2] // k.shape[2]
    q_ints, q_scales, k_ints, k_scales = _int8_operands(q, k, scale=scale, log2e=SAGE_LOG2E, blocks=SAGE_BLOCKS,
                                                        work=work)
    q_row_scale = numerics.expand_block_scales(q_scales, SAGE_BLOCKS["q"], q.shape[1])
    k_col_scale = numerics.expand_block_scales(k_scales, SAGE_BLOCKS["k"], k.shape[1])
    k_ints, k_col_scale = _repeat_heads(groups, k_ints, k_col_scale)
    vh = _heads_first(v.to(work).to(torch.float16).float(), groups)
    return work, q_ints, q_row_scale, k_ints, k_col_scale, vh


def emu_sage(q, k, v, *, scale, causal=False, return_lse=False, pv_chunk=16):
    """SageAttention 1.0.6's Triton kernel in float32 (docs/emulators.md): exact int8 Q·K (integers below 2^24),
    descaled as ``(qk * q_scale) * k_scale``; exp2 online softmax over blocks of 64 keys; ``p`` to fp16; each block's
    ``P.V`` accumulated in fp16, rounded after every ``pv_chunk`` keys (the fp16 MMA's k-step, an assumed point)."""
    _check_options(pv_chunk=(pv_chunk, {1, 2, 4, 8, 16, 32, 64}))
    work, q_ints, q_row_scale, k_ints, k_col_scale, vh = _sage_operands(q, k, v, scale=scale)
    tail = -k.shape[1] % SAGE_BLOCKS["k"]
    if tail and not causal:
        # The non-causal kernel loads the keys past the last one as zeros and never masks their scores: each scores
        # exactly 0, enters the softmax's sum and brings a zero value, so the output shrinks toward zero. Modelled as
        # it happens (the causal kernel's mask hides them; fluxlab's sage adapter refuses such inputs).
        k_ints = torch.nn.functional.pad(k_ints, (0, 0, 0, tail))
        k_col_scale = torch.nn.functional.pad(k_col_scale, (0, tail), value=1.0)
        vh = torch.nn.functional.pad(vh, (0, 0, 0, tail))

    def logits(rows):  # exact integer products, then (qk * q_scale) * k_scale in float32
        qk = torch.matmul(q_ints[:, :, rows], k_ints.transpose(-1, -2))
        return qk.mul_(q_row_scale[:, :, rows, None]).mul_(k_col_scale[:, :, None, :])

    acc, l, _ = _flash(q.shape[1], vh, logits=logits, block_n=SAGE_BLOCKS["k"], exp=torch.exp2, causal=causal,
                       row_multiple=SAGE_BLOCKS["q"], block_max=_row_max, probs=_exp_shifted(torch.exp2),
                       round_p=numerics.round_fp16_, add_pv=_fp16_accumulated_pv(pv_chunk))
    out = (acc / l[..., None]).to(work).float()
    result = _finish(out, q.dtype)
    if return_lse:
        raise ValueError("emu_sage does not return the log-sum-exp (sageattn 1.0.6 does not)")
    return result


def _aiter_sage_operands(q, k, v, *, scale, fp8):
    """int8 Q (per-row scales) and K (per-block scales) and fp8 V (per-channel scales), heads first, K/V repeated
    for grouped-query attention: what aiter's fav3 Sage wrapper hands its kernel."""
    numerics.fp8_dtype(fp8)
    work = _work_dtype(q.dtype)
    groups = q.shape[2] // k.shape[2]
    q_ints, q_scales, k_ints, k_scales = _int8_operands(q, k, scale=scale, log2e=AITER_LOG2E,
                                                        blocks=AITER_SAGE_BLOCKS, work=work)
    q_row_scale = numerics.expand_block_scales(q_scales, AITER_SAGE_BLOCKS["q"], q.shape[1])
    v_work = v.to(work).transpose(1, 2)
    fp8_max = torch.finfo(numerics.fp8_dtype(fp8)).max
    v_scales = v_work.abs().amax(dim=-2).float() / fp8_max
    v_scales = torch.where(v_scales > 0, v_scales, torch.ones_like(v_scales))
    v_q = numerics.round_fp8(v_work.float() / v_scales[..., None, :], fp8)
    k_ints, k_scales, v_q, v_scales = _repeat_heads(groups, k_ints, k_scales, v_q, v_scales)
    return q_ints, q_row_scale, k_ints, k_scales, v_q, v_scales


def emu_aiter_sage(q, k, v, *, scale, causal=False, return_lse=False, fp8="e4m3fnuz"):
    """aiter's fav3 Sage kernel (``fav3_sage_wrapper_func``) in float32 (docs/emulators.md): int8 Q (blocks of 256)
    and smoothed K (128), fp8 V per channel (``fp8``: ``e4m3fnuz`` on gfx942, ``e4m3fn`` on gfx950),
    ``fma(qk, q_descale * k_descale, -m)``, exp2, ``p`` to fp8 before a float32 ``P.V``, bf16 output."""
    q_ints, q_row_scale, k_ints, k_scales, v_q, v_scales = _aiter_sage_operands(q, k, v, scale=scale, fp8=fp8)
    block_scale = q_row_scale[..., None] * k_scales[:, :, None, :]  # [B, H, Sq, key blocks]: q_descale * k_descale

    def logits(rows):  # the exact integer products; masked to -inf where causal
        return torch.matmul(q_ints[:, :, rows], k_ints.transpose(-1, -2))

    def block_max(qk, rows, blocks):
        return qk.amax(dim=-1) * block_scale[:, :, rows, blocks]

    def probs(qk, m_safe, rows, blocks):
        # fma(qk, scale, -m): the product is exact in float64, one rounding to float32
        shifted = qk.double().mul_(block_scale[:, :, rows, blocks].double()[..., None]).sub_(m_safe.double()[..., None])
        return shifted.float().exp2_()

    acc, l, _ = _flash(q.shape[1], v_q, logits=logits, block_n=AITER_SAGE_BLOCKS["k"], exp=torch.exp2, causal=causal,
                       row_multiple=AITER_SAGE_BLOCKS["q"], block_max=block_max, probs=probs,
                       round_p=lambda p: numerics.round_fp8_(p, fp8), add_pv=_add_matmul)
    reciprocal = 1.0 / torch.clamp(l, min=AITER_MIN_L)
    out = numerics.round_bf16(acc * reciprocal[..., None] * v_scales[:, :, None, :])
    result = _finish(out, q.dtype)
    if return_lse:
        raise ValueError("emu_aiter_sage does not return the log-sum-exp (fluxlab's aiter_sage does not ask for it)")
    return result


def _block_size(value) -> str | None:
    """Why ``value`` is not a key-block size (a whole number >= 0; 0: all keys at once), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "block_n takes a whole number of keys >= 0 (0: all keys at once, e.g. block_n=128)"
    return None


_PROBS = {"bf16": "p rounded to bf16 before P.V", "fp32": "p kept in float32"}
_CVT_PROBS = {0: "P rounded to nearest even", 1: "P rounded by how_v3_bf16_cvt (aiter's default)"}
_PV_CHUNK = {n: f"fp16 P.V rounded every {n} keys" for n in (1, 2, 4, 8, 16, 32, 64)}
_FP8 = {"e4m3fnuz": "MI300 / gfx942", "e4m3fn": "gfx950"}


def _caps(emulates: str, **extra) -> Capabilities:
    return Capabilities(vendors=ALL_VENDORS, dtypes=FLOAT_DTYPES, emulated=True, emulates=emulates, **extra)


BACKENDS = [
    Backend("emu_bf16", emu_bf16, _caps("sdpa_flash", returns_lse=True),
            "emulated bf16 flash kernel (float32 with bf16 q/k/v, probabilities and output)",
            options={"probs": "bf16", "block_n": 0}, option_values={"probs": _PROBS, "block_n": _block_size}),
    Backend("emu_aiter", emu_aiter, _caps("aiter", returns_lse=True),
            "emulated AMD aiter flash kernel: bf16 conversions by how_v3_bf16_cvt (0 RTNE, 1 RTNA, 2 RTZ)",
            options={"how_v3_bf16_cvt": 1, "cvt_probs": 1, "block_n": 0},
            option_values={"how_v3_bf16_cvt": BF16_ROUNDING_MODES, "cvt_probs": _CVT_PROBS, "block_n": _block_size}),
    Backend("emu_sage", emu_sage, _caps("sage", max_head_dim=EMULATED_MAX_HEAD_DIM, quantised=True),
            "emulated SageAttention 1.0.6 (int8 Q/K per block, smoothed K, fp16 P.V); quantised",
            options={"pv_chunk": 16}, option_values={"pv_chunk": _PV_CHUNK}),
    Backend("emu_aiter_sage", emu_aiter_sage, _caps("aiter_sage", max_head_dim=EMULATED_MAX_HEAD_DIM, quantised=True),
            "emulated aiter fav3 Sage kernel (int8 Q/K per block, fp8 V per channel, fp8 P); quantised",
            options={"fp8": "e4m3fnuz"}, option_values={"fp8": _FP8}),
]
