"""FlashAttention-3's FP8 forward (``fa3_fp8``): Q, K and V in e4m3 with one descale per (batch, KV head), the
form FA3's ``flash_attn_func`` takes (``q_descale``/``k_descale``/``v_descale``, float32 ``[batch, kv_heads]``).
Quantised: never picked automatically (in no priority list); chosen by name only.

The adapter quantises here: per (batch, KV head) ``descale = amax(|x|) / 448`` over the sequence, the head dim and,
for Q, the query heads that share the KV head (the kernel reads Q's descale at the KV head's index), then
``e4m3(x / descale)`` (clamped to ±448, nearest-even). The kernel takes ``softmax_scale`` as given and multiplies its
log2 scale by ``q_descale * k_descale`` itself, applies ``v_descale`` in the epilogue and returns bf16; the output is
cast back to the input dtype. Its LSE is natural-log ``[B, H, S]`` (FA3's ``Softmax::finalize`` removes the 2**8 it
scales P by before the FP8 P·V). ``emu_fa3_fp8`` (emulated_hopper.py) models the numerics.

Installed by ``pip install 'fluxlab[fa3]'`` (PyPI's ``fa3-fwd``) or the official build of FA3's ``hopper/`` folder
(flash_attn.FA3).
"""

from __future__ import annotations

import torch

from .base import HALF_DTYPES, Backend, Capabilities
from .flash_attn import FA3, fa3_module

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def fp8_descaled(x: torch.Tensor, kv_heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [B, S, H, D] -> (e4m3 tensor [B, S, H, D], float32 descale [B, kv_heads]): one amax per batch and KV head
    (``kv_heads`` < H: the H // kv_heads query heads of a group share it). An all-zero group gets descale 1."""
    batch, seq, heads, dim = x.shape
    kv_heads = kv_heads or heads
    groups = x.float().reshape(batch, seq, kv_heads, heads // kv_heads, dim)
    amax = groups.abs().amax(dim=(1, 3, 4))  # [B, kv_heads]
    descale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    scaled = groups / descale[:, None, :, None, None]
    fp8 = scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8).reshape(batch, seq, heads, dim)
    return fp8, descale.contiguous()


def fp8_operands(q, k, v):
    """What fa3_fp8 hands the kernel: e4m3 q, k, v and their (batch, KV head) descales."""
    kv_heads = k.shape[2]
    (q8, dq), (k8, dk), (v8, dv) = (fp8_descaled(t, kv_heads) for t in (q, k, v))
    return q8, k8, v8, dq, dk, dv


def _fa3_fp8_call(flash_attn_func):
    def fa3_fp8(q, k, v, *, scale, causal=False, return_lse=False):
        q8, k8, v8, dq, dk, dv = fp8_operands(q, k, v)
        result = flash_attn_func(q8, k8, v8, softmax_scale=scale, causal=causal, q_descale=dq, k_descale=dk,
                                 v_descale=dv, return_attn_probs=return_lse)
        out, lse = result if isinstance(result, tuple) else (result, None)
        out = out.to(q.dtype)
        if not return_lse:
            return out
        if lse is None:
            raise RuntimeError("the FlashAttention-3 FP8 call returned no log-sum-exp although it was requested")
        return out, lse.float()
    return fa3_fp8


def bind_fa3_fp8():
    return _fa3_fp8_call(fa3_module().flash_attn_func)


def fa3_fp8(q, k, v, **kwargs):
    return bind_fa3_fp8()(q, k, v, **kwargs)


def _head_dim_multiple_of_16(q, k, platform):
    # 16 fp8 values are one 16-byte TMA/WGMMA row: FA3 requires it for FP8
    return [] if q.shape[-1] % 16 == 0 else [f"fa3_fp8 needs head_dim a multiple of 16, got {q.shape[-1]}"]


BACKENDS = [
    Backend("fa3_fp8", fa3_fp8,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_90",)}, dtypes=HALF_DTYPES,
                         max_head_dim=256, returns_lse=True, quantised=True),
            "FlashAttention-3 FP8 (e4m3 Q/K/V, per (batch, KV head) amax descales, P in e4m3; quantised)",
            requires=(FA3,), extra_checks=_head_dim_multiple_of_16, binder=bind_fa3_fp8),
]
