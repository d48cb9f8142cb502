"""Emulated Hopper quantised kernels: FlashAttention-3's FP8 forward (``emu_fa3_fp8``) and SageAttention 2's sm90 kernel
(``emu_sage2``), reproduced in float32 on any device with the machinery of emulated.py. Never picked automatically.

Where the algorithms come from (read, not copied), what is not modelled and how they are validated: docs/hopper.md.
"""

from __future__ import annotations

import math

import torch

from .. import numerics
from .base import Backend
from .emulated import (EMULATED_MAX_HEAD_DIM, _add_matmul, _caps, _check_options, _exp_shifted,
                       _finish, _flash, _heads_first, _repeat_heads, _work_dtype)
from .flash_attn import FP8_MAX, fp8_operands

LOG2E_F32 = torch.tensor(math.log2(math.e), dtype=torch.float32).item()  # M_LOG2E as the float the kernels use
FA3_FP8_MAX_OFFSET = 8.0  # softmax.h Max_offset for FP8: p in [0, 2**8]
SAGE2_FP8_OFFSET = 8.807  # attn_utils.cuh S_FP8_OFFSET: exp2(8.807) ~ 448, e4m3's largest value
SAGE2_LOG2E = 1.44269504  # core.py's constant for the returned LSE
SAGE2_BLOCKS = {"q": 64, "k": 128, "warp": 16}  # CTA_Q, CTA_K, a warp's query rows


def fa3_fp8_block_n(head_dim: int) -> int:
    """FA3's FP8 key-block size on Hopper (tile_size_fwd_sm90, no paged KV, no softcap)."""
    return next((block for limit, block in ((64, 160), (96, 128), (128, 224), (192, 160)) if head_dim <= limit), 128)


def _round_e4m3_(p: torch.Tensor) -> torch.Tensor:
    """In place: ``p`` to e4m3 (nearest even, saturating at ±448 like ``cvt.rn.satfinite``), as float32."""
    return numerics.round_fp8_(p.clamp_(-FP8_MAX, FP8_MAX))


def _offset_max(offset: float):
    def block_max(x, rows, blocks):
        return x.amax(dim=-1) - offset
    return block_max


def emu_fa3_fp8(q, k, v, *, scale, causal=False, return_lse=False, block_n=None):
    """FlashAttention-3's FP8 forward in float32 (docs/hopper.md): e4m3 Q/K/V with per (batch, KV head)
    descales, float32 scores in log2 units, an online softmax over key blocks of ``block_n`` (None: FA3's tile for
    the head dim) taken from the last block to the first, ``p`` scaled by 2**8 and rounded to e4m3 before a float32
    P·V, ``acc * v_descale / sum`` rounded to bf16 (FA3's FP8 output dtype), returned in the input dtype."""
    q8, k8, v8, dq, dk, dv = fp8_operands(q, k, v)
    groups = q.shape[2] // k.shape[2]
    qh = _heads_first(q8.float())
    kh, vh = _heads_first(k8.float(), groups), _heads_first(v8.float(), groups)
    q_len, k_len = qh.shape[2], kh.shape[2]
    block = int(block_n) if block_n else fa3_fp8_block_n(q.shape[-1])
    if block < 1:
        raise ValueError(f"block_n must be >= 1, got {block_n}")
    dq, dk, dv = _repeat_heads(groups, dq, dk, dv)  # [B, Hkv] -> [B, H]
    scale_log2 = torch.tensor(scale * LOG2E_F32, dtype=torch.float32).item()
    row_scale = (scale_log2 * (dq * dk))[:, :, None, None].to(q.device)  # [B, H, 1, 1]
    # FA3 walks key blocks from the last (ragged) one to the first: reverse the keys and pad the front so that the
    # ragged block comes first, whole; padded keys score -inf and carry zero values.
    pad = (-k_len) % block
    key_order = torch.arange(k_len - 1, -1, -1, device=q.device)
    k_rev = torch.nn.functional.pad(kh[:, :, key_order], (0, 0, pad, 0))
    v_rev = torch.nn.functional.pad(vh[:, :, key_order], (0, 0, pad, 0))
    positions = torch.cat([torch.full((pad,), -1, device=q.device), key_order])  # original key index, -1: padding

    def logits(rows):
        s = torch.matmul(qh[:, :, rows], k_rev.transpose(-1, -2)).mul_(row_scale)
        keep = positions[None, :] >= 0
        if causal:  # bottom-right aligned, as FA3
            query = torch.arange(rows.start, rows.stop, device=q.device)[:, None]
            keep = keep & (positions[None, :] <= query + (k_len - q_len))
        return s.masked_fill_(~keep, -math.inf)

    acc, l, m = _flash(q_len, v_rev, logits=logits, block_n=block, exp=torch.exp2, causal=False,
                       block_max=_offset_max(FA3_FP8_MAX_OFFSET), probs=_exp_shifted(torch.exp2),
                       round_p=_round_e4m3_, add_pv=_add_matmul)
    out = acc * (dv[:, :, None, None].to(q.device) / l[..., None])
    result = _finish(numerics.round_bf16(out), q.dtype)
    if not return_lse:
        return result
    # m holds max * scale_log2 - 8 and l the sum of 2**8-scaled p: undo both
    lse = ((m + FA3_FP8_MAX_OFFSET) + torch.log2(l / 2 ** FA3_FP8_MAX_OFFSET)) * math.log(2)
    return result, lse


def _group_scales(x, group_of, groups, *, per_thread):
    """int8 quantisation of ``x`` [B, H, S, D] (float32) with one scale per token group (``group_of`` [S] -> group
    index < ``groups``): Triton's per-thread rule (``amax / 127 + 1e-7``, divide, ties away from zero) or the CUDA
    per-warp/per-block rule (``max(amax, 1e-7) / 127``, multiply by ``127 / amax``, nearest even)."""
    batch, heads, seq, _ = x.shape
    token_amax = x.abs().amax(dim=-1)  # [B, H, S]
    amax = torch.zeros(batch, heads, groups, dtype=torch.float32, device=x.device)
    amax.scatter_reduce_(-1, group_of.expand(batch, heads, seq), token_amax, reduce="amax", include_self=True)
    if per_thread:
        scales = amax / 127.0 + 1e-7
        ints = numerics.round_half_away(x / scales.gather(-1, group_of.expand(batch, heads, seq))[..., None])
    else:
        amax = torch.clamp(amax, min=1e-7)
        scales = amax / 127.0
        multiplier = (127.0 / amax).gather(-1, group_of.expand(batch, heads, seq))
        ints = torch.round(x * multiplier[..., None]).clamp_(-128, 127)
    return ints, scales.gather(-1, group_of.expand(batch, heads, seq))  # integers (float32), per-token scales


def _sage2_groups(seq, qk_quant_gran, device):
    """Query and key token -> scale group, for SageAttention 2's sm90 quantisers."""
    tokens = torch.arange(seq, device=device)
    warp, block = SAGE2_BLOCKS["warp"], SAGE2_BLOCKS["k"]
    if qk_quant_gran == "per_thread":
        q_group = tokens // warp * 8 + tokens % 8  # rows r and r + 8 of each warp's 16
        k_group = tokens // block * 4 + (tokens % 8) // 2  # 32 interleaved keys of each 128
        return q_group, -(-seq // warp) * 8, k_group, -(-seq // block) * 4
    return tokens // warp, -(-seq // warp), tokens // block, -(-seq // block)


def sage2_operands(q, k, v, *, qk_quant_gran="per_thread", smooth_k=True):
    """What SageAttention 2's sm90 wrapper hands its kernel, heads first, K/V repeated for grouped-query attention:
    int8 Q and K (float32 integers) with per-token scales [B, H, S], e4m3 V (float32) with per-channel scales
    [B, H, D], the K mean [B, H, 1, D] (zeros without ``smooth_k``) and the work dtype."""
    _check_options(qk_quant_gran=(qk_quant_gran, {"per_thread", "per_warp"}), smooth_k=(smooth_k, {True, False}))
    work = _work_dtype(q.dtype)
    groups = q.shape[2] // k.shape[2]
    per_thread = qk_quant_gran == "per_thread"
    qw, kw, vw = q.to(work), k.to(work), v.to(work)
    km = kw.mean(dim=1, keepdim=True) if smooth_k else torch.zeros_like(kw[:, :1])  # in the input dtype, as torch
    if per_thread:
        k_smooth = (kw - km).float()  # Triton path: k - km in the input dtype
    else:
        k_smooth = kw.float() - km.float()  # CUDA path: the mean subtracted in float32
    q_group, q_groups, _, _ = _sage2_groups(q.shape[1], qk_quant_gran, q.device)
    _, _, k_group, k_groups = _sage2_groups(k.shape[1], qk_quant_gran, q.device)
    q_ints, q_scale = _group_scales(qw.float().transpose(1, 2), q_group, q_groups, per_thread=per_thread)
    k_ints, k_scale = _group_scales(k_smooth.transpose(1, 2), k_group, k_groups, per_thread=per_thread)
    vh = vw.float().transpose(1, 2)  # [B, Hkv, S, D]
    amax = vh.abs().amax(dim=-2)  # [B, Hkv, D]
    v_scale = amax / FP8_MAX
    multiplier = torch.where(amax > 0, FP8_MAX / amax, torch.zeros_like(amax))  # an all-zero channel stays 0
    v8 = numerics.round_fp8((vh * multiplier[..., None, :]).clamp_(-FP8_MAX, FP8_MAX))
    kmh = km.float().transpose(1, 2)  # [B, Hkv, 1, D]
    k_ints, k_scale, v8, v_scale, kmh = _repeat_heads(groups, k_ints, k_scale, v8, v_scale, kmh)
    return work, q_ints, q_scale, k_ints, k_scale, v8, v_scale, kmh


def emu_sage2(q, k, v, *, scale, causal=False, return_lse=False, qk_quant_gran="per_thread",
              pv_accum_dtype="fp32+fp32", smooth_k=True):
    """SageAttention 2's sm90 kernel in float32 (docs/hopper.md): INT8 Q·K exact, descaled as
    ``s * (sm_scale * log2e * (q_scale * k_scale))``; online softmax over blocks of 128 keys with ``m = max - 8.807``;
    ``p`` rounded to e4m3 before each block's float32 P·V (started from zero, added to the float32 accumulator);
    ``acc / sum * v_scale`` in the input's half dtype."""
    _check_options(pv_accum_dtype=(pv_accum_dtype, {"fp32+fp32"}))
    work, q_ints, q_scale, k_ints, k_scale, v8, v_scale, kmh = sage2_operands(q, k, v, qk_quant_gran=qk_quant_gran,
                                                                              smooth_k=smooth_k)
    sm_log2 = torch.tensor(scale * LOG2E_F32, dtype=torch.float32).item()

    def logits(rows):  # exact integer products, then one float32 multiplier per (query, key)
        s = torch.matmul(q_ints[:, :, rows], k_ints.transpose(-1, -2))
        return s.mul_((q_scale[:, :, rows, None] * k_scale[:, :, None, :]).mul_(sm_log2))

    acc, l, m = _flash(q.shape[1], v8, logits=logits, block_n=SAGE2_BLOCKS["k"], exp=torch.exp2, causal=causal,
                       row_multiple=SAGE2_BLOCKS["q"], block_max=_offset_max(SAGE2_FP8_OFFSET),
                       probs=_exp_shifted(torch.exp2), round_p=_round_e4m3_, add_pv=_add_matmul)
    out = (acc / l[..., None]) * v_scale[:, :, None, :]
    result = _finish(out.to(work).float(), q.dtype)
    if not return_lse:
        return result
    qh = _heads_first(q.to(work).float())
    correction = torch.matmul(qh, kmh.transpose(-1, -2)).squeeze(-1) * scale  # the K mean's share of each score
    return result, (m + torch.log2(l)) / SAGE2_LOG2E + correction


BACKENDS = [
    # experimental: opt-in (named, never in compare's default CPU sweep): both fail the quantised budget on some of
    # its inputs, as their kernels do (benchmarks/results/h100/hopper_quant/)
    Backend("emu_fa3_fp8", emu_fa3_fp8, _caps("fa3_fp8", returns_lse=True, quantised=True, experimental=True),
            "emulated FlashAttention-3 FP8 (e4m3 Q/K/V per (batch, head), P scaled by 2^8 in e4m3); quantised",
            options={"block_n": None}),
    Backend("emu_sage2", emu_sage2, _caps("sage2", max_head_dim=EMULATED_MAX_HEAD_DIM, returns_lse=True,
                                          quantised=True, experimental=True),
            "emulated SageAttention 2 sm90 (int8 Q/K per thread or warp, smoothed K, fp8 V per channel, fp8 P); "
            "quantised", options={"qk_quant_gran": "per_thread", "pv_accum_dtype": "fp32+fp32", "smooth_k": True},
            option_values={"qk_quant_gran": {"per_thread": "the kernel's default", "per_warp": "per warp / block"},
                           "pv_accum_dtype": {"fp32+fp32": "per block, added to float32"},
                           "smooth_k": {True: "K minus its token mean", False: "K as it is"}}),
]
