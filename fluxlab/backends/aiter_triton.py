"""AITER's Triton kernels: the Sage kernel (``aiter_sage``, int8 Q/K + fp8 V, ROCm) and the Triton MHA
(``aiter_triton``, experimental: ROCm, and NVIDIA through Triton with the packaging work-arounds below).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

from .aiter import AITER, ROCM_ATTENTION_ARCHES
from ..errors import BackendUnavailableError
from .base import HALF_DTYPES, Backend, Capabilities, import_first

# The Sage entry point moved between aiter releases; both paths are tried, newest first.
SAGE_MODULES = ("aiter.ops.triton.attention.fav3_sage", "aiter.ops.triton.fav3_sage")
MHA_MODULES = ("aiter.ops.triton.attention.mha", "aiter.ops.triton.mha")

# aiter ships Triton configs keyed by AMD device with the AMD-only launch option waves_per_eu; on NVIDIA
# an explicit config is passed instead (it ran on an H100: benchmarks/results/h100/attention.json, rows
# "aiter_triton").
NVIDIA_MHA_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 64, "PRELOAD_V": False, "num_warps": 4, "num_stages": 2,
                     "num_ctas": 1}


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
        _patch_nvidia_arch()
    return import_first(*module_names)


def _patch_nvidia_arch():
    """aiter's arch helper must return an AMD arch name: on CUDA Triton reports the int 90, and
    0.1.7's ``utils/types.py`` tests ``get_arch() in ("gfx950")`` (a string) at import, which raises."""
    try:
        arch_info = importlib.import_module("aiter.ops.triton.utils._triton.arch_info")
    except ImportError:
        return
    # gfx950 selects the OCP fp8 dtypes (float8_e4m3fn/e5m2), the ones NVIDIA uses.
    arch_info.get_arch = lambda: "gfx950"


def bind_aiter_sage():
    """Import the Sage entry point once (when a plan is made) and return the adapter around it."""
    module = import_first(*SAGE_MODULES)
    ignores_scale = module.__name__ == SAGE_MODULES[-1]
    sage_func = module.fav3_sage_wrapper_func

    def aiter_sage(q, k, v, *, scale, causal=False, return_lse=False):
        if ignores_scale and abs(scale - q.shape[-1] ** -0.5) > 1e-12 * scale:
            # The older entry point accepts softmax_scale but ignores it: refuse rather than be silently wrong.
            raise BackendUnavailableError(
                f"{SAGE_MODULES[-1]} ignores softmax_scale, and {scale} is not head_dim ** -0.5; upgrade aiter "
                f"to a release with {SAGE_MODULES[0]}")
        return sage_func(q, k, v, softmax_scale=scale, causal=causal, layout="bshd")
    return aiter_sage


def bind_aiter_triton():
    """Import the Triton MHA once (when a plan is made; on NVIDIA without aiter's ROCm probes) and return the
    adapter around it."""
    from ..platform import current_platform

    vendor = current_platform().vendor
    mha_func = _load_triton_only(MHA_MODULES, vendor).flash_attn_func
    default_config = NVIDIA_MHA_CONFIG if vendor == "nvidia" else None

    def aiter_triton(q, k, v, *, scale, causal=False, return_lse=False, config=None):
        config = default_config if config is None else config
        extra = {"config": dict(config)} if config is not None else {}
        result = mha_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal, return_lse=return_lse,
                          **extra)
        if not return_lse:
            return result[0] if isinstance(result, tuple) else result
        return result[0], result[1].float()
    return aiter_triton


def aiter_sage(q, k, v, **kwargs):
    """For callers of ``backend.fn``: binds on every call (plans bind once)."""
    return bind_aiter_sage()(q, k, v, **kwargs)


def aiter_triton(q, k, v, **kwargs):
    """For callers of ``backend.fn``: binds on every call (plans bind once)."""
    return bind_aiter_triton()(q, k, v, **kwargs)


BACKENDS = [
    Backend("aiter_sage", aiter_sage,
            Capabilities(vendors=frozenset({"amd"}), arches={"amd": ("gfx942", "gfx950")},
                         dtypes=HALF_DTYPES, head_dims=(64, 128), quantised=True, stand_in_only=True),
            "AITER's Sage kernel: Q,K int8 per block (K mean-smoothed), V fp8; quantised. Its LSE is not "
            "exposed: releases before mid-2026 returned one uncorrected for the K smoothing",
            requires=(AITER,), binder=bind_aiter_sage),
    Backend("aiter_triton", aiter_triton,
            Capabilities(vendors=frozenset({"amd", "nvidia"}),
                         arches={"amd": ROCM_ATTENTION_ARCHES, "nvidia": ("sm_80+",)},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True, experimental=True),
            "AITER's Triton MHA (experimental; on NVIDIA runs through Triton with an explicit config)",
            requires=(AITER,), options={"config": None}, binder=bind_aiter_triton),
]
