"""FlashAttention 2 (``flash_attn``), 3 (``flash_attn_interface``, or PyPI's forward-only ``fa3_fwd_interface``), 3's
FP8 forward (``fa3_fp8``) and 4 (``flash_attn.cute``); ``fa``, the best generation for the inputs, is a priority group
(``GROUPS`` below). All take ``[B, S, H, D]``: no layout change.

Ranks: fa4 and SDPA's cuDNN kernel are the measured fastest on Hopper (benchmarks/results/h100/attention.json).
fa3 ran on an H100 from PyPI's fa3-fwd (benchmarks/results/h100/hopper_quant/): level with fa4 and cuDNN, ahead of
neither, so it sits below them and is picked only on a machine that has it and lacks both. fa2 is proven on a
stand-in only (its call contract, tests/test_standin_contracts.py), so its rank follows the upstream project's
published ordering. fa3_fp8 is quantised: in no priority list, chosen by name only; how it quantises and
``emu_fa3_fp8`` models it: docs/hopper.md.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

from .base import HALF_DTYPES, Backend, Capabilities, Group, Requirement, split_lse, unbound

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


@dataclasses.dataclass(frozen=True)
class FirstOf(Requirement):
    """A requirement any one of ``alternatives`` meets (the first installed one is used); ``module`` and
    ``distribution`` name the first alternative, for listings."""

    alternatives: tuple[Requirement, ...] = ()

    def installed(self) -> Requirement | None:
        return next((r for r in self.alternatives if r.missing_reason() is None), None)

    def missing_reason(self) -> str | None:
        if self.installed() is None:
            return "none of its builds is installed: " + " | ".join(r.missing_reason() for r in self.alternatives)
        return None

    def version(self) -> str | None:
        return found.version() if (found := self.installed()) is not None else None


FA2 = Requirement("flash_attn", "flash-attn", "pip install flash-attn --no-build-isolation "
                  "(builds from source; ROCm: ROCm's flash-attention fork)")
FA3_OFFICIAL = Requirement("flash_attn_interface", "flash-attn-3", "build FlashAttention's hopper/ directory from "
                           "source (cd hopper && python setup.py install)")
FA3_FWD = Requirement("fa3_fwd_interface", "fa3-fwd", "pip install 'fluxlab[fa3]' (PyPI's fa3-fwd==0.0.3: "
                      "FlashAttention-3's hopper/ forward kernels, bf16 and FP8)")
FA3_BUILDS = (FA3_OFFICIAL, FA3_FWD)
FA3 = FirstOf(FA3_FWD.module, FA3_FWD.distribution, f"{FA3_FWD.install}; or {FA3_OFFICIAL.install}",
              alternatives=FA3_BUILDS)
# FlashAttention-4 is a beta on PyPI whose Python API still changes between betas: the adapter is written for one.
FA4 = Requirement("flash_attn.cute", "flash-attn-4", "pip install 'flash-attn-4==4.0.0b36'", exact_version="4.0.0b36")


def fa3_module():
    """The FlashAttention-3 interface module that is installed: the official build of FA3's ``hopper/`` folder
    (``flash_attn_interface``) first, else PyPI's forward-only rebuild ``fa3-fwd`` (``fa3_fwd_interface``: the same
    ``flash_attn_func`` signature, bf16 and FP8 only)."""
    if (found := FA3.installed()) is None:
        raise ImportError(FA3.missing_reason())
    return importlib.import_module(found.module)


# Binders: import the library once, when a plan is made, and return the adapter around its function.
def bind_fa2():
    from flash_attn import flash_attn_func

    def fa2(q, k, v, *, scale, causal=False, return_lse=False):
        result = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal,
                                 return_attn_probs=return_lse)  # -> (out, softmax_lse, S_dmask)
        return split_lse(result, return_lse, "the FlashAttention call")
    return fa2


def bind_fa3():
    flash_attn_func = fa3_module().flash_attn_func

    def fa3(q, k, v, *, scale, causal=False, return_lse=False):
        # Early FA3 releases always return (out, lse); later ones only with return_attn_probs=True.
        try:
            result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=return_lse)
        except TypeError:
            result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
        return split_lse(result, return_lse, "the FlashAttention call")
    return fa3


def bind_fa4():
    from flash_attn.cute import flash_attn_func

    def fa4(q, k, v, *, scale, causal=False, return_lse=False):
        # Returns (out, lse); lse is None under no_grad unless return_lse=True. The hot path: no helper call.
        result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_lse=return_lse)
        if not return_lse:
            return result[0] if type(result) is tuple else result
        return split_lse(result, True, "the FlashAttention call")
    return fa4


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
    """What fa3_fp8 hands the kernel: e4m3 q, k, v and their (batch, KV head) descales (FA3 reads Q's descale at the
    KV head's index)."""
    kv_heads = k.shape[2]
    (q8, dq), (k8, dk), (v8, dv) = (fp8_descaled(t, kv_heads) for t in (q, k, v))
    return q8, k8, v8, dq, dk, dv


def bind_fa3_fp8():
    """The kernel takes ``softmax_scale`` as given, folds ``q_descale * k_descale`` into it, applies ``v_descale`` in
    the epilogue and returns bf16 (cast back to the input dtype) and the natural-log LSE."""
    flash_attn_func = fa3_module().flash_attn_func

    def fa3_fp8(q, k, v, *, scale, causal=False, return_lse=False):
        q8, k8, v8, dq, dk, dv = fp8_operands(q, k, v)
        result = flash_attn_func(q8, k8, v8, softmax_scale=scale, causal=causal, q_descale=dq, k_descale=dk,
                                 v_descale=dv, return_attn_probs=return_lse)
        result = split_lse(result, return_lse, "the FlashAttention-3 FP8 call")
        return (result[0].to(q.dtype), result[1]) if return_lse else result.to(q.dtype)
    return fa3_fp8


def _head_dim_multiple_of(name, multiple):
    def check(q, k, platform):
        return [] if q.shape[-1] % multiple == 0 else [f"{name} needs head_dim a multiple of {multiple}, got "
                                                       f"{q.shape[-1]}"]
    return check


def fa3_build_reasons(q, k, platform):
    """fa3-fwd is built with FLASHATTENTION_DISABLE_FP16 (its fa3_fwd_config.py): fp16 is refused up front."""
    if q.dtype == torch.float16 and FA3.installed() is FA3_FWD:
        return ["fa3 from PyPI's fa3-fwd is built without fp16 kernels: use bf16, or the official build of "
                "FlashAttention's hopper/ directory"]
    return []


def _nvidia(*arches: str, **caps) -> Capabilities:
    return Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": arches}, dtypes=HALF_DTYPES,
                        max_head_dim=256, returns_lse=True, **caps)


BACKENDS = [
    Backend("fa2", unbound(bind_fa2),
            Capabilities(vendors=frozenset({"nvidia", "amd"}),
                         arches={"nvidia": ("sm_80+",), "amd": ("gfx90a", "gfx942", "gfx950")},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True, stand_in_only=True),
            "FlashAttention-2 (flash_attn.flash_attn_func)", requires=(FA2,), binder=bind_fa2,
            diffusers=("flash", "flash_varlen"),  # varlen: the same kernel over packed sequences (FLUX.2 has none)
            priority={"nvidia": 50, "amd/gfx942": 20, "amd/gfx950": 20}, groups={"fa": 3}),
    Backend("fa3", unbound(bind_fa3), _nvidia("sm_90", min_head_dim=64),
            "FlashAttention-3, Hopper only (flash_attn_interface or fa3_fwd_interface .flash_attn_func)",
            requires=(FA3,), extra_checks=fa3_build_reasons, binder=bind_fa3,
            diffusers=("_flash_3", "_flash_varlen_3"), priority={"nvidia/sm_90": 30}, groups={"fa": 2}),
    Backend("fa3_fp8", unbound(bind_fa3_fp8), _nvidia("sm_90", min_head_dim=64, quantised=True),
            "FlashAttention-3 FP8 (e4m3 Q/K/V, per (batch, KV head) amax descales, P in e4m3; quantised)",
            # 16 fp8 values are one 16-byte TMA/WGMMA row: FA3 requires it for FP8
            requires=(FA3,), extra_checks=_head_dim_multiple_of("fa3_fp8", 16), binder=bind_fa3_fp8),
    Backend("fa4", unbound(bind_fa4), _nvidia("sm_90", "sm_100", "sm_103"),
            "FlashAttention-4, CuTe DSL (flash_attn.cute.flash_attn_func), Hopper and Blackwell",
            requires=(FA4,), extra_checks=_head_dim_multiple_of("fa4", 8), binder=bind_fa4,
            priority={"nvidia/sm_90": 10, "nvidia/sm_100": 10, "nvidia/sm_103": 10}, groups={"fa": 1}),
]

GROUPS = [
    Group("fa", "the best FlashAttention generation that runs the inputs (fa4 > fa3 > fa2 on Hopper)",
          Capabilities(vendors=frozenset({"nvidia", "amd"}), dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
          aliases=("flash_attn",)),
]
