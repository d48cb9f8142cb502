"""AMD AITER's attention kernels, ROCm unless noted; each adapter passes ``softmax_scale`` explicitly.

- ``aiter``: the CK/assembly flash kernel ``aiter.flash_attn_func`` (returns the LSE, so it can serve ring attention);
  ``how_v3_bf16_cvt`` picks its bf16 rounding (0 RTNE, 1 RTNA = aiter's default, 2 RTZ).
- ``aiter_sage``: the Triton Sage kernel (int8 Q/K + fp8 V); ``aiter_triton``: the Triton MHA (experimental; also on
  NVIDIA through Triton, with the packaging work-arounds below).
- ``aiter_mha_v4``: MHA v4 quantised attention (``aiter.ops.mha_v4.mha_v4``; ``format=`` as sglang's and vLLM-Omni's
  AITER_QUANT name it), gfx950 / gfx942; ``aiter_sage_mxfp4``: the Triton MXFP4 Sage kernel, gfx950.
  Both proven on a stand-in only (tests/standins); their sources and numerics: docs/amd_quant.md.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import torch

from ..errors import BackendUnavailableError
from ..platform import current_platform
from .base import HALF_DTYPES, Backend, Capabilities, Requirement, import_first, refuse_other_scale, split_lse, unbound

BF16_ROUNDING_MODES = {0: "RTNE, round-to-nearest-even", 1: "RTNA, round-to-nearest-away (aiter default)",
                       2: "RTZ, round-toward-zero"}
AITER = Requirement("aiter", "amd-aiter",
                    "build aiter on a ROCm machine from ROCm's aiter repository (see docs/install.md: AMD); "
                    "PyPI's `aiter` is an unrelated package")
ROCM_ATTENTION_ARCHES = ("gfx90a", "gfx942", "gfx950")
# The Sage entry point moved between aiter releases; both paths are tried, newest first.
SAGE_MODULES = ("aiter.ops.triton.attention.fav3_sage", "aiter.ops.triton.fav3_sage")
MHA_MODULES = ("aiter.ops.triton.attention.mha", "aiter.ops.triton.mha")
MXFP4_SAGE_MODULE = "aiter.ops.triton.attention.fav3_sage_attention_mxfp4_wrapper"
# aiter ships Triton configs keyed by AMD device with the AMD-only launch option waves_per_eu; on NVIDIA
# an explicit config is passed instead (benchmarks/results/h100/attention.json, rows "aiter_triton").
NVIDIA_MHA_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 64, "PRELOAD_V": False, "num_warps": 4, "num_stages": 2,
                     "num_ctas": 1}
MHA_V4_HEAD_DIM = 128
# format -> aiter AttentionFormat names for Q, K, V ("FP8" is the arch's native_fp8_format()).
MHA_V4_FORMATS = {"i8fp8": ("INT8", "INT8", "FP8"), "fp8": ("FP8", "FP8", "FP8"), "mxfp6": ("MXFP6", "MXFP6", "FP8"),
                  "mxfp4": ("MXFP4", "MXFP4", "FP8"), "f6f4": ("MXFP6", "MXFP6", "MXFP4"),
                  "f4f4": ("MXFP4", "MXFP4", "MXFP4")}
# The formats each arch's kernel manifest (hsa/<arch>/fmha_v4_fwd/fmha_v4_fwd.csv) has a row for.
MHA_V4_ARCH_FORMATS = {"gfx950": frozenset(MHA_V4_FORMATS), "gfx942": frozenset({"i8fp8"})}
FORMAT_MEANINGS = {"i8fp8": "INT8 Q/K + FP8 V, per-tensor scales (gfx950, gfx942)",
                   "fp8": "FP8 Q/K/V, per-tensor scales (gfx950)",
                   "mxfp6": "rotated MXFP6 Q/K + FP8 V per channel (gfx950)",
                   "mxfp4": "rotated MXFP4 Q/K + FP8 V per channel (gfx950)",
                   "f6f4": "rotated MXFP6 Q/K + MXFP4 V (gfx950)", "f4f4": "rotated MXFP4 Q/K + MXFP4 V (gfx950)"}


def bind_aiter():
    """Import aiter once (when a plan is made) and return the adapter around ``aiter.flash_attn_func``."""
    import aiter

    flash_attn_func = aiter.flash_attn_func

    def aiter_attention(q, k, v, *, scale, causal=False, return_lse=False, how_v3_bf16_cvt=1):
        if how_v3_bf16_cvt not in BF16_ROUNDING_MODES:
            raise ValueError(f"how_v3_bf16_cvt must be one of {sorted(BF16_ROUNDING_MODES)} "
                             f"({BF16_ROUNDING_MODES}), got {how_v3_bf16_cvt!r}")
        result = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal,
                                 return_lse=return_lse, return_attn_probs=False, how_v3_bf16_cvt=how_v3_bf16_cvt)
        return split_lse(result, return_lse, "aiter.flash_attn_func")
    return aiter_attention


def _load_triton_only(module_names, platform_vendor):
    """Import an ``aiter.ops.triton`` module without running ``aiter/__init__.py`` on NVIDIA.

    ``import aiter`` probes ROCm tools, which fail on NVIDIA; newer releases skip the probes with
    AITER_TRITON_ONLY=1. For older ones the parent packages are registered as bare namespace modules
    pointing at the installed folders, so only the Triton subtree is executed.
    """
    if platform_vendor == "nvidia" and "aiter" not in sys.modules:
        os.environ.setdefault("AITER_TRITON_ONLY", "1")
        spec = importlib.util.find_spec("aiter")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("aiter is not installed")
        root = list(spec.submodule_search_locations)[0]
        for name, path in (("aiter", root), ("aiter.ops", os.path.join(root, "ops"))):
            module = types.ModuleType(name)
            module.__path__ = [path]
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=os.path.join(path, "__init__.py"),
                                                             is_package=True)
            module.__spec__.submodule_search_locations = [path]
            sys.modules[name] = module
        # aiter's arch helper must return an AMD arch name: on CUDA Triton reports the int 90, and 0.1.7's
        # utils/types.py tests ``get_arch() in ("gfx950")`` (a string) at import. gfx950 selects the OCP fp8 dtypes
        # (float8_e4m3fn/e5m2), the ones NVIDIA uses.
        with contextlib.suppress(ImportError):
            importlib.import_module("aiter.ops.triton.utils._triton.arch_info").get_arch = lambda: "gfx950"
    return import_first(*module_names)


def bind_aiter_sage():
    """Import the Sage entry point once (when a plan is made) and return the adapter around it."""
    module = import_first(*SAGE_MODULES)
    ignores_scale = module.__name__ == SAGE_MODULES[-1]
    sage_func = module.fav3_sage_wrapper_func

    def aiter_sage(q, k, v, *, scale, causal=False, return_lse=False):
        if ignores_scale:  # the older entry point accepts softmax_scale but ignores it
            refuse_other_scale(scale, q, f"{SAGE_MODULES[-1]} ignores softmax_scale",
                               f"upgrade aiter to a release with {SAGE_MODULES[0]}")
        return sage_func(q, k, v, softmax_scale=scale, causal=causal, layout="bshd")
    return aiter_sage


def bind_aiter_triton():
    """Import the Triton MHA once (when a plan is made; on NVIDIA without aiter's ROCm probes) and return the
    adapter around it."""
    vendor = current_platform().vendor
    mha_func = _load_triton_only(MHA_MODULES, vendor).flash_attn_func
    default_config = NVIDIA_MHA_CONFIG if vendor == "nvidia" else None

    def aiter_triton(q, k, v, *, scale, causal=False, return_lse=False, config=None):
        config = default_config if config is None else config
        extra = {"config": dict(config)} if config is not None else {}
        result = mha_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal, return_lse=return_lse,
                          **extra)
        return split_lse(result, return_lse, "aiter's Triton flash_attn_func")
    return aiter_triton


def format_reasons(format: str, arch: str | None) -> list[str]:
    """Why MHA v4's ``format`` cannot run on ``arch`` (empty: it can)."""
    if format not in MHA_V4_FORMATS:
        return [f"format={format!r} is not one of {sorted(MHA_V4_FORMATS)}"]
    have = MHA_V4_ARCH_FORMATS.get(arch)
    if have is None:
        return [f"aiter MHA v4 has kernels for {' and '.join(sorted(MHA_V4_ARCH_FORMATS))} only, not {arch}"]
    if format not in have:
        return [f"aiter MHA v4 has no {arch} kernel for format={format} (its {arch} manifest: {sorted(have)}); "
                "it runs on gfx950 (MI350/MI355X)"]
    return []


def bind_aiter_mha_v4():
    """Import ``aiter.ops.mha_v4`` once (when a plan is made) and return the adapter around ``mha_v4``, which
    takes contiguous bf16 q/k/v, quantises them itself and never falls back."""
    module = import_first("aiter.ops.mha_v4")
    mha_v4, formats, native_fp8 = module.mha_v4, module.AttentionFormat, module.native_fp8_format

    def aiter_mha_v4(q, k, v, *, scale, causal=False, return_lse=False, format="i8fp8"):
        platform = current_platform()
        # on an AMD GPU the arch's manifest is checked here, with the reason; elsewhere (a stand-in) aiter decides
        reasons = format_reasons(format, platform.arch) if platform.vendor == "amd" else (
            [] if format in MHA_V4_FORMATS else format_reasons(format, None))
        if causal or return_lse:
            reasons.append("aiter MHA v4 is dense non-causal attention without the log-sum-exp")
        if reasons:
            raise BackendUnavailableError("aiter_mha_v4 cannot run this: " + "; ".join(reasons),
                                          {"aiter_mha_v4": reasons})
        q_format, k_format, v_format = (native_fp8() if name == "FP8" else formats[name]
                                        for name in MHA_V4_FORMATS[format])
        return mha_v4(q.contiguous(), k.contiguous(), v.contiguous(), q_format, k_format, v_format,
                      softmax_scale=scale, return_lse=False)
    return aiter_mha_v4


def bind_aiter_sage_mxfp4():
    """The MXFP4 wrapper refuses ``hadamard_rotation=False`` itself (so True is passed) and takes no softmax scale."""
    wrapper = import_first(MXFP4_SAGE_MODULE).fav3_sage_mxfp4_wrapper

    def aiter_sage_mxfp4(q, k, v, *, scale, causal=False, return_lse=False):
        refuse_other_scale(scale, q, "aiter_sage_mxfp4 takes no softmax scale (it uses head_dim ** -0.5)")
        return wrapper(q, k, v, causal, layout="bshd", hadamard_rotation=True, return_lse=return_lse)
    return aiter_sage_mxfp4


def _amd(*arches: str, **caps) -> Capabilities:
    return Capabilities(vendors=frozenset({"amd"}), arches={"amd": arches}, **caps)


BACKENDS = [
    Backend("aiter", unbound(bind_aiter),
            _amd(*ROCM_ATTENTION_ARCHES, dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True, stand_in_only=True),
            "AMD AITER flash attention (CK / hand-written assembly on MI300), ROCm only",
            requires=(AITER,), options={"how_v3_bf16_cvt": 1},
            option_values={"how_v3_bf16_cvt": BF16_ROUNDING_MODES}, binder=bind_aiter, priority={"amd": 10}),
    Backend("aiter_sage", unbound(bind_aiter_sage),
            _amd("gfx942", "gfx950", dtypes=HALF_DTYPES, head_dims=(64, 128), quantised=True, stand_in_only=True),
            "AITER's Sage kernel: Q,K int8 per block (K mean-smoothed), V fp8; quantised. Its LSE is not "
            "exposed: releases before mid-2026 returned one uncorrected for the K smoothing",
            requires=(AITER,), binder=bind_aiter_sage),
    Backend("aiter_triton", unbound(bind_aiter_triton),
            Capabilities(vendors=frozenset({"amd", "nvidia"}),
                         arches={"amd": ROCM_ATTENTION_ARCHES, "nvidia": ("sm_80+",)},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True, experimental=True),
            "AITER's Triton MHA (experimental; on NVIDIA runs through Triton with an explicit config)",
            requires=(AITER,), options={"config": None}, binder=bind_aiter_triton),
    Backend("aiter_mha_v4", unbound(bind_aiter_mha_v4),
            _amd(*sorted(MHA_V4_ARCH_FORMATS), dtypes=frozenset({torch.bfloat16}), head_dims=(MHA_V4_HEAD_DIM,),
                 gqa=False, causal=False, returns_lse=False, quantised=True, stand_in_only=True),
            "AMD aiter MHA v4 quantised attention (sglang AITER_QUANT formats), ROCm gfx950/gfx942; quantised",
            requires=(AITER,), options={"format": "i8fp8"}, option_values={"format": FORMAT_MEANINGS},
            binder=bind_aiter_mha_v4),
    Backend("aiter_sage_mxfp4", unbound(bind_aiter_sage_mxfp4),
            _amd("gfx950", dtypes=HALF_DTYPES, head_dims=(128,), gqa=False, returns_lse=True, quantised=True,
                 stand_in_only=True),  # GQA not verified: refused
            "AMD aiter MXFP4 Sage attention (Triton, rotated MXFP4 Q/K + fp8 V), ROCm gfx950; quantised",
            requires=(AITER,), binder=bind_aiter_sage_mxfp4),
]
