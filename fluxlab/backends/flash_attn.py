"""FlashAttention 2 (``flash_attn``), 3 (``flash_attn_interface``, or PyPI's forward-only ``fa3_fwd_interface``) and 4
(``flash_attn.cute``); ``fa``, the best generation for the inputs, is a priority group (``GROUPS`` below). All take
``[B, S, H, D]``: no layout change.

Ranks: fa4 and SDPA's cuDNN kernel are the measured fastest on Hopper (benchmarks/results/h100/attention.json).
fa3 ran on an H100 from PyPI's fa3-fwd (benchmarks/results/h100/hopper_quant/): level with fa4 and cuDNN, ahead of
neither, so it sits below them and is picked only on a machine that has it and lacks both. fa2 is proven on a
stand-in only (its call contract, tests/test_standin_contracts.py), so its rank follows the upstream project's
published ordering.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

from .base import HALF_DTYPES, Backend, Capabilities, Group, Requirement


def _split_lse(result, return_lse: bool):
    """FA releases differ in whether they return a tuple; normalise to ``out`` or ``(out, lse)``."""
    if isinstance(result, tuple):
        out, lse = result[0], result[1]
    else:
        out, lse = result, None
    if not return_lse:
        return out
    if lse is None:
        raise RuntimeError("the FlashAttention call returned no log-sum-exp although it was requested")
    return out, lse.float()


def _fa2_call(flash_attn_func):
    def fa2(q, k, v, *, scale, causal=False, return_lse=False):
        result = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal,
                                 return_attn_probs=return_lse)  # -> (out, softmax_lse, S_dmask)
        return _split_lse(result, return_lse)
    return fa2


def _fa3_call(flash_attn_func):
    def fa3(q, k, v, *, scale, causal=False, return_lse=False):
        # Early FA3 releases always return (out, lse); later ones only with return_attn_probs=True.
        try:
            result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=return_lse)
        except TypeError:
            result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
        return _split_lse(result, return_lse)
    return fa3


def _fa4_call(flash_attn_func):
    def fa4(q, k, v, *, scale, causal=False, return_lse=False):
        # Returns (out, lse); lse is None under no_grad unless return_lse=True. The hot path: no helper call.
        result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_lse=return_lse)
        if not return_lse:
            return result[0] if type(result) is tuple else result
        return _split_lse(result, True)
    return fa4


# Binders: import the library once, when a plan is made, and return the adapter around its function.
def bind_fa2():
    from flash_attn import flash_attn_func

    return _fa2_call(flash_attn_func)


def fa3_module():
    """The FlashAttention-3 interface module that is installed: the official build of FA3's ``hopper/`` folder
    (``flash_attn_interface``) first, else PyPI's forward-only rebuild ``fa3-fwd`` (``fa3_fwd_interface``: the same
    ``flash_attn_func`` signature, bf16 and FP8 only)."""
    for requirement in FA3_BUILDS:
        if requirement.missing_reason() is None:
            return importlib.import_module(requirement.module)
    raise ImportError(FA3.missing_reason())


def bind_fa3():
    return _fa3_call(fa3_module().flash_attn_func)


def bind_fa4():
    from flash_attn.cute import flash_attn_func

    return _fa4_call(flash_attn_func)


def _unbound(binder):
    """For callers that use ``backend.fn`` directly: binds on every call (plans bind once)."""
    def call(q, k, v, **kwargs):
        return binder()(q, k, v, **kwargs)
    return call


def _multiple_of_8(name):
    def check(q, k, platform):
        return [] if q.shape[-1] % 8 == 0 else [f"{name} needs head_dim a multiple of 8, got {q.shape[-1]}"]
    return check


FA2 = Requirement("flash_attn", "flash-attn", "pip install flash-attn --no-build-isolation "
                  "(builds from source; ROCm: ROCm's flash-attention fork)")
@dataclasses.dataclass(frozen=True)
class FirstOf(Requirement):
    """A requirement any one of ``alternatives`` meets (the first installed one is used); ``module`` and
    ``distribution`` name the first alternative, for listings."""

    alternatives: tuple[Requirement, ...] = ()

    def installed(self) -> Requirement | None:
        return next((r for r in self.alternatives if r.missing_reason() is None), None)

    def missing_reason(self) -> str | None:
        if self.installed() is not None:
            return None
        return "none of its builds is installed: " + " | ".join(r.missing_reason() for r in self.alternatives)

    def version(self) -> str | None:
        found = self.installed()
        return found.version() if found is not None else None


FA3_OFFICIAL = Requirement("flash_attn_interface", "flash-attn-3",
                           "build FlashAttention's hopper/ directory from source (cd hopper && python setup.py install)")
FA3_FWD = Requirement("fa3_fwd_interface", "fa3-fwd", "pip install 'fluxlab[fa3]' (PyPI's fa3-fwd==0.0.3: "
                      "FlashAttention-3's hopper/ forward kernels, bf16 and FP8)")
FA3_BUILDS = (FA3_OFFICIAL, FA3_FWD)
FA3 = FirstOf(FA3_FWD.module, FA3_FWD.distribution, f"{FA3_FWD.install}; or {FA3_OFFICIAL.install}",
              alternatives=FA3_BUILDS)


def fa3_build_reasons(q, k, platform):
    """fa3-fwd is built with FLASHATTENTION_DISABLE_FP16 (its fa3_fwd_config.py): fp16 is refused up front."""
    if q.dtype == torch.float16 and FA3.installed() is FA3_FWD:
        return ["fa3 from PyPI's fa3-fwd is built without fp16 kernels: use bf16, or the official build of "
                "FlashAttention's hopper/ directory"]
    return []


# FlashAttention-4 is a beta on PyPI whose Python API still changes between betas: the adapter is written for one.
FA4 = Requirement("flash_attn.cute", "flash-attn-4", "pip install 'flash-attn-4==4.0.0b36'", exact_version="4.0.0b36")

BACKENDS = [
    Backend("fa2", _unbound(bind_fa2),
            Capabilities(vendors=frozenset({"nvidia", "amd"}),
                         arches={"nvidia": ("sm_80+",), "amd": ("gfx90a", "gfx942", "gfx950")},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True, stand_in_only=True),
            "FlashAttention-2 (flash_attn.flash_attn_func)", requires=(FA2,), binder=bind_fa2,
            diffusers=("flash", "flash_varlen"),  # varlen: the same kernel over packed sequences (FLUX.2 has none)
            priority={"nvidia": 50, "amd/gfx942": 20, "amd/gfx950": 20}, groups={"fa": 3}),
    Backend("fa3", _unbound(bind_fa3),
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_90",)},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
            "FlashAttention-3, Hopper only (flash_attn_interface or fa3_fwd_interface .flash_attn_func)",
            requires=(FA3,), extra_checks=fa3_build_reasons, binder=bind_fa3,
            diffusers=("_flash_3", "_flash_varlen_3"), priority={"nvidia/sm_90": 30}, groups={"fa": 2}),
    Backend("fa4", _unbound(bind_fa4),
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_90", "sm_100", "sm_103")},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
            "FlashAttention-4, CuTe DSL (flash_attn.cute.flash_attn_func), Hopper and Blackwell",
            requires=(FA4,), extra_checks=_multiple_of_8("fa4"), binder=bind_fa4,
            priority={"nvidia/sm_90": 10, "nvidia/sm_100": 10, "nvidia/sm_103": 10}, groups={"fa": 1}),
]

GROUPS = [
    Group("fa", "the best FlashAttention generation that runs the inputs (fa4 > fa3 > fa2 on Hopper)",
          Capabilities(vendors=frozenset({"nvidia", "amd"}), dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
          aliases=("flash_attn",)),
]
