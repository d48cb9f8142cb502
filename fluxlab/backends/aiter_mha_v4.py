"""AMD aiter's MHA v4 quantised attention (``aiter.ops.mha_v4.mha_v4``), ROCm gfx950 / gfx942 only.

``mha_v4(q, k, v, q_format, k_format, v_format, softmax_scale=None, out=None, return_lse=False)`` takes contiguous
bf16 ``[B, S, H, 128]`` q/k/v, quantises them itself (the recipe follows from the three formats) and returns a bf16
``[B, S, H, 128]`` tensor; dense, non-causal, no LSE, as many KV heads as query heads, and it never falls back
(aiter/ops/mha_v4.md at ROCm/aiter e4048607a535). ``format=`` names the combination as sglang's and vLLM-Omni's
AITER_QUANT backends do. The kernel rows are the manifests ``hsa/gfx950/fmha_v4_fwd/fmha_v4_fwd.csv`` (all six)
and ``hsa/gfx942/fmha_v4_fwd/fmha_v4_fwd.csv`` (i8fp8 only, with fnuz fp8 V). Proven on a stand-in only
(tests/standins/aiter/ops/mha_v4.py); its numbers on any machine: ``emu_aiter_quant`` (same ``format=``).
"""

from __future__ import annotations

import torch

from ..errors import BackendUnavailableError
from ..platform import current_platform
from .aiter import AITER
from .base import Backend, Capabilities, import_first

HEAD_DIM = 128
# format -> aiter AttentionFormat names for Q, K, V ("FP8" is the arch's native_fp8_format()).
MHA_V4_FORMATS = {
    "i8fp8": ("INT8", "INT8", "FP8"),
    "fp8": ("FP8", "FP8", "FP8"),
    "mxfp6": ("MXFP6", "MXFP6", "FP8"),
    "mxfp4": ("MXFP4", "MXFP4", "FP8"),
    "f6f4": ("MXFP6", "MXFP6", "MXFP4"),
    "f4f4": ("MXFP4", "MXFP4", "MXFP4"),
}
# The formats each arch's manifest has a kernel row for.
MHA_V4_ARCH_FORMATS = {"gfx950": frozenset(MHA_V4_FORMATS), "gfx942": frozenset({"i8fp8"})}
FORMAT_MEANINGS = {
    "i8fp8": "INT8 Q/K + FP8 V, per-tensor scales (gfx950, gfx942)",
    "fp8": "FP8 Q/K/V, per-tensor scales (gfx950)",
    "mxfp6": "rotated MXFP6 Q/K + FP8 V per channel (gfx950)",
    "mxfp4": "rotated MXFP4 Q/K + FP8 V per channel (gfx950)",
    "f6f4": "rotated MXFP6 Q/K + MXFP4 V (gfx950)",
    "f4f4": "rotated MXFP4 Q/K + MXFP4 V (gfx950)",
}


def format_reasons(format: str, arch: str | None) -> list[str]:
    """Why ``format`` cannot run on ``arch`` (empty: it can)."""
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
    """Import ``aiter.ops.mha_v4`` once (when a plan is made) and return the adapter around ``mha_v4``."""
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


def aiter_mha_v4(q, k, v, **kwargs):
    """For callers of ``backend.fn``: binds on every call (plans bind once)."""
    return bind_aiter_mha_v4()(q, k, v, **kwargs)


BACKENDS = [
    Backend("aiter_mha_v4", aiter_mha_v4,
            Capabilities(vendors=frozenset({"amd"}), arches={"amd": tuple(sorted(MHA_V4_ARCH_FORMATS))},
                         dtypes=frozenset({torch.bfloat16}), head_dims=(HEAD_DIM,), gqa=False, causal=False,
                         returns_lse=False, quantised=True, stand_in_only=True),
            "AMD aiter MHA v4 quantised attention (sglang AITER_QUANT formats), ROCm gfx950/gfx942; quantised",
            requires=(AITER,), options={"format": "i8fp8"}, option_values={"format": FORMAT_MEANINGS},
            binder=bind_aiter_mha_v4),
]
