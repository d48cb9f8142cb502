"""PyTorch's scaled_dot_product_attention: torch's own pick, or one of its kernels forced.

Forced kernels use ``torch.nn.attention.sdpa_kernel``; where the log-sum-exp is asked for, the kernel's
own ATen op is called (it computes the LSE anyway) and its LSE is returned in fluxlab's convention.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..platform import Platform
from ..util import torch_dtype_name
from .base import FLOAT_DTYPES, HALF_DTYPES, Backend, Capabilities


def _sdpa(q, k, v, *, scale, causal=False, return_lse=False, kernel=None):
    # This is the hot path of every FLUX.2 attention call: plain transposes, no helper calls.
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = qh.shape[1] != kh.shape[1]
    if kernel is None:
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale,
                                              enable_gqa=gqa).transpose(1, 2)
    op = _KERNEL_OPS.get((kernel, q.device.type == "cpu"))
    if op is None or (not return_lse and (gqa or q.shape[-1] % 8)):
        # The math kernel (no op of its own here) and shapes the kernel's op does not take directly (GQA,
        # padded head dims): let SDPA adapt them, with only this kernel allowed.
        with sdpa_kernel(kernel):
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2)
    # The kernel's ATen op, which SDPA itself calls once it has chosen: no per-call sdpa_kernel() context
    # switch, and the log-sum-exp is there for free.
    if gqa:  # the private ATen ops take no ``enable_gqa``: repeat K/V heads
        groups = qh.shape[1] // kh.shape[1]
        kh, vh = kh.repeat_interleave(groups, dim=1), vh.repeat_interleave(groups, dim=1)
    out, lse = op(qh, kh, vh, causal, scale)
    if not return_lse:
        return out.transpose(1, 2)
    # mem-efficient pads the LSE's sequence dim to a multiple of 32; cuDNN may add a trailing 1.
    lse = lse.reshape(lse.shape[0], lse.shape[1], -1)[..., :qh.shape[2]]
    return out.transpose(1, 2), lse.float()


_aten = torch.ops.aten
_KERNEL_OPS = {  # (kernel, on CPU) -> op(q, k, v, causal, scale) -> (out, lse) in [B, H, S, D] / [B, H, S]
    (SDPBackend.FLASH_ATTENTION, True): lambda q, k, v, causal, scale:
        _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale),
    (SDPBackend.FLASH_ATTENTION, False): lambda q, k, v, causal, scale:
        _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2],
    (SDPBackend.EFFICIENT_ATTENTION, False): lambda q, k, v, causal, scale:
        _aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)[:2],
    (SDPBackend.CUDNN_ATTENTION, False): lambda q, k, v, causal, scale:
        _aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)[:2],
}


def _torch_says_no(check, q, k, platform=None) -> list[str]:
    """Ask torch's own kernel-eligibility check on real CUDA tensors, keeping its explanation."""
    if q.device.type != "cuda":
        return []
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    params = torch.backends.cuda.SDPAParams(qh, kh, kh, None, 0.0, False, qh.shape[1] != kh.shape[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = check(params, debug=True)
    if ok:
        return []
    detail = "; ".join(str(w.message).strip() for w in caught)
    return [f"torch's own check (torch.backends.cuda.{check.__name__}) rejects these inputs"
            + (f": {detail}" if detail else "")]


def _flash_checks(q, k, platform: Platform):
    if platform.is_gpu and q.dtype not in HALF_DTYPES:
        return [f"sdpa_flash on GPU runs float16/bfloat16 only, got {torch_dtype_name(q.dtype)}"]
    return _torch_says_no(torch.backends.cuda.can_use_flash_attention, q, k)


def _kernel(name: str, kernel, caps: Capabilities, description: str, **declared) -> Backend:
    return Backend(name, functools.partial(_sdpa, kernel=kernel), caps, description,
                   diffusers=(f"_native_{name[5:]}",), **declared)


_ALL = frozenset({"nvidia", "amd", "cpu", "other"})
BACKENDS = [
    Backend("sdpa", _sdpa, Capabilities(vendors=_ALL),
            "torch.nn.functional.scaled_dot_product_attention; torch picks the kernel (version-dependent)",
            aliases=("torch_sdpa",), diffusers=("native",),
            # On CPU torch's own pick is the fastest exact kernel, and bit-identical to diffusers' default.
            priority={"nvidia": 90, "amd": 90, "cpu": 10, "other": 10}),
    _kernel("sdpa_math", SDPBackend.MATH, Capabilities(vendors=_ALL),
            "SDPA's unfused math kernel (materialises the S x S scores; slow, for debugging)", priority={"cpu": 30}),
    _kernel("sdpa_flash", SDPBackend.FLASH_ATTENTION,
            Capabilities(vendors=frozenset({"nvidia", "amd", "cpu"}), arches={"nvidia": ("sm_80+",)},
                         dtypes=FLOAT_DTYPES, max_head_dim=256, returns_lse=True),
            "SDPA's FlashAttention-2 kernel (CUDA/ROCm) or its CPU flash kernel",
            extra_checks=_flash_checks, priority={"nvidia": 40, "amd": 40, "cpu": 20}),
    _kernel("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION,
            Capabilities(vendors=frozenset({"nvidia", "amd"}), dtypes=frozenset({torch.float16, torch.bfloat16,
                                                                                 torch.float32}),
                         gqa=False, returns_lse=True),  # torch 2.11 rejects enable_gqa for this kernel
            "SDPA's memory-efficient (xformers/cutlass) kernel",
            extra_checks=functools.partial(_torch_says_no, torch.backends.cuda.can_use_efficient_attention),
            priority={"nvidia": 60, "amd": 60}),
    _kernel("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_80+",)}, dtypes=HALF_DTYPES,
                         max_head_dim=128, returns_lse=True, needs_cudnn_attention=True),
            "SDPA's cuDNN fused-attention kernel (NVIDIA only; ROCm has no cuDNN)",
            extra_checks=functools.partial(_torch_says_no, torch.backends.cuda.can_use_cudnn_attention),
            priority={"nvidia": 20}),
]
