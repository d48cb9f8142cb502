"""Emulated AMD aiter MHA v4 quantised attention (sglang's AITER_QUANT formats) in float32 on any device.

One backend, ``emu_aiter_quant``, with ``format=`` one of the six combinations ``aiter.ops.mha_v4`` runs on gfx950
(named as sglang's and vLLM-Omni's AITER_QUANT backends name them):

============  ==========================================  =================================  ===============
format        Q/K                                         V                                  gfx942
============  ==========================================  =================================  ===============
``i8fp8``     INT8, one float32 scale per tensor          FP8, one scale per tensor          yes (fnuz V)
``fp8``       FP8, one scale per tensor (not rotated)     FP8, one scale per tensor          no
``mxfp6``     MXFP6 E2M3, rotated, E8M0 per 1x32          FP8, one scale per channel         no
``mxfp4``     MXFP4 E2M1, rotated, E8M0 per 1x32          FP8, one scale per channel         no
``f6f4``      MXFP6 E2M3, rotated, E8M0 per 1x32          MXFP4, E8M0 per channel x 32 keys  no
``f4f4``      MXFP4 E2M1, rotated, E8M0 per 1x32          MXFP4, E8M0 per channel x 32 keys  no
============  ==========================================  =================================  ===============

The quantisers are ``fluxlab.mx`` (bit-faithful to aiter's at commit e4048607a535: which one each format uses is
``mha_v4()``'s raw path; ``hsa/gfx950|gfx942/fmha_v4_fwd/fmha_v4_fwd.csv`` lists the kernel rows). The MX formats
rotate Q and K by the normalised hd128 Walsh–Hadamard transform (Q·Kᵀ is unchanged by it, the quantisation error is
spread) and fold ``softmax_scale * log2(e)`` into Q before quantising it (``mha_v4_q_multiplier``).

Documented by aiter: dense, non-causal, head_dim 128, matching Q and KV heads, bf16 inputs, bf16 output, no LSE,
kernel tiles of 256 queries x 128 keys on gfx950 (64 keys on gfx942). The attention kernels themselves are closed
assembly; what follows is ASSUMED (stated again in docs/amd_quant.md) and is what an option lets one vary:

- Q·Kᵀ of the dequantised values accumulated in float32 (the products are exact; the order of the float32 sums is
  BLAS's, not the MFMA's). INT8/FP8 rows: ``s = qk * float32(q_scale * k_scale * softmax_scale * log2 e)``
  (multiplied left to right in float32); MX rows: ``s = qk`` (the scale is inside Q).
- Online softmax in base 2 over blocks of 128 keys (``exp2(s - m)`` in float32, running max and sum in float32).
- ``p`` rounded to V's fp8 encoding, unscaled, before a float32 ``P·V`` (``p=fp8``; also for MXFP4 V: an FP8
  ``P`` with an FP4 ``V`` is what gfx950's mixed-format scaled MFMA takes). ``p=bf16`` / ``p=fp32`` vary it.
- Epilogue ``acc * (1 / l) * v_scale`` (no ``v_scale`` for MX V, whose block scales are inside the product),
  converted to bf16 by ``bf16_cvt`` (0 nearest-even, assumed default; 1 ties away; 2 toward zero).
- The MX Q/K and MXFP4 V hardware conversions round to nearest, ties to even, and saturate (fluxlab.mx).

Inputs of any float dtype are first rounded to bf16 (``mha_v4`` takes bf16 only); the output holds bf16 values in
the input dtype. Never picked automatically; quantised and emulated. Models with another head_dim can run it on
q/k/v zero-padded to 128 (with the original softmax scale, dropping the padded output columns): exactly what
padding does on the device, where the rotation then spreads the real channels over all 128.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import mx, numerics
from .aiter import FORMAT_MEANINGS, MHA_V4_ARCH_FORMATS
from .base import FLOAT_DTYPES, Backend, Capabilities
from .emulated import (ALL_VENDORS, _add_matmul, _check_options, _exact_float32, _exp_shifted, _finish, _flash,
                       _row_max)

HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class Format:
    """How one MHA v4 combination quantises Q/K and V (aiter's format names for it: MHA_V4_FORMATS)."""

    qk: str  # "int8", "fp8", "mxfp6", "mxfp4"
    v: str  # "fp8_tensor", "fp8_channel", "mxfp4"


FORMATS = {"i8fp8": Format("int8", "fp8_tensor"), "fp8": Format("fp8", "fp8_tensor"),
           "mxfp6": Format("mxfp6", "fp8_channel"), "mxfp4": Format("mxfp4", "fp8_channel"),
           "f6f4": Format("mxfp6", "mxfp4"), "f4f4": Format("mxfp4", "mxfp4")}
# Per arch: the formats its manifest has a kernel row for, its native FP8 encoding and the kernel's key tile.
ARCHES = {"gfx950": {"formats": MHA_V4_ARCH_FORMATS["gfx950"], "fp8": "e4m3fn", "kv_tile": 128},
          "gfx942": {"formats": MHA_V4_ARCH_FORMATS["gfx942"], "fp8": "e4m3fnuz", "kv_tile": 64}}
P_ROUNDING = {"fp8": "P rounded to V's fp8 encoding before P.V (assumed)", "bf16": "P rounded to bf16",
              "fp32": "P kept in float32"}
BF16_CVT = {0: "RTNE (assumed default)", 1: "RTNA", 2: "RTZ"}


def _quantise_qk(x: torch.Tensor, kind: str, *, multiplier: float, clip: float, fp8: str):
    """[B, S, H, 128] -> (values [B, H, S, 128] float32, per-tensor scale or None)."""
    heads_first = x.transpose(1, 2)
    if kind == "int8":
        ints, scale = mx.quantise_int8_per_tensor(heads_first, clip)
        return ints, scale
    if kind == "fp8":
        values, scale = mx.quantise_fp8_per_tensor(heads_first, fp8)
        return values, scale
    quantise = mx.quantise_mxfp4_qk if kind == "mxfp4" else mx.quantise_mxfp6_qk
    values, _codes = quantise(heads_first.contiguous(), multiplier)
    return values, None


def _quantise_v(v: torch.Tensor, kind: str, fp8: str):
    """[B, S, H, 128] -> (values [B, H, S, 128] float32, descale to apply to the output: None, 0-d or [B, H, 1, D])."""
    if kind == "fp8_tensor":
        values, scale = mx.quantise_fp8_per_tensor(v, fp8)
        return values.transpose(1, 2), scale
    if kind == "fp8_channel":
        values, scales = mx.quantise_fp8_v_per_channel(v, fp8)
        return values.transpose(1, 2), scales[:, :, None, :]
    values, _codes = mx.quantise_mxfp4_v(v)
    return values.transpose(1, 2), None


def _reasons(format, arch):
    _check_options(format=(format, set(FORMATS)), arch=(arch, set(ARCHES)))
    if format not in ARCHES[arch]["formats"]:
        raise ValueError(f"aiter MHA v4 has no {arch} kernel for format={format} (its {arch} manifest lists "
                         f"{sorted(ARCHES[arch]['formats'])}); use arch=gfx950")


def emu_aiter_quant(q, k, v, *, scale, causal=False, return_lse=False, format="i8fp8", arch="gfx950", p="fp8",
                    bf16_cvt=0, clip=1.0):
    """aiter MHA v4 with quantised Q/K/V (``format``: see the module docstring) in float32, on any device."""
    _reasons(format, arch)
    _check_options(p=(p, set(P_ROUNDING)), bf16_cvt=(bf16_cvt, set(BF16_CVT)))
    if causal or return_lse:
        raise ValueError("aiter MHA v4 is dense non-causal attention without the log-sum-exp")
    if q.shape[-1] != HEAD_DIM or k.shape[-1] != HEAD_DIM or v.shape[-1] != HEAD_DIM:
        raise ValueError(f"aiter MHA v4 takes head_dim {HEAD_DIM} only (got {q.shape[-1]}); zero-pad q/k/v to "
                         f"{HEAD_DIM} and keep the original softmax scale")
    if q.shape[2] != k.shape[2]:
        raise ValueError("aiter MHA v4 needs as many key/value heads as query heads (no grouped-query attention)")
    if not (isinstance(clip, (int, float)) and 0 < clip <= 1):
        raise ValueError(f"option clip={clip!r} must be a number in (0, 1] (INT8 scale = amax * clip / 127)")
    recipe = FORMATS[format]
    fp8 = ARCHES[arch]["fp8"]
    multiplier = mx.q_multiplier(scale)
    qh, q_scale = _quantise_qk(q, recipe.qk, multiplier=multiplier, clip=clip, fp8=fp8)
    kh, k_scale = _quantise_qk(k, recipe.qk, multiplier=1.0, clip=clip, fp8=fp8)
    vh, v_descale = _quantise_v(v, recipe.v, fp8)
    if q_scale is not None:  # per-tensor rows: one float32 factor on the integer / fp8 products
        factor = ((q_scale * k_scale) * torch.tensor(scale, dtype=torch.float32)) * torch.tensor(mx.LOG2E,
                                                                                                   dtype=torch.float32)
        factor = factor.to(q.device)
    else:
        factor = None

    def logits(rows):
        s = torch.matmul(qh[:, :, rows], kh.transpose(-1, -2))
        return s.mul_(factor) if factor is not None else s

    if p == "fp8":
        def round_p(x):
            return numerics.round_fp8_(x, fp8)
    elif p == "bf16":
        def round_p(x):
            return numerics.round_bf16_(x)
    else:
        def round_p(x):
            return x

    with _exact_float32(q.device):
        acc, l, _ = _flash(q.shape[1], k.shape[1], qh.shape[:2], vh, logits=logits, block_n=ARCHES[arch]["kv_tile"],
                           exp=torch.exp2, causal=False, block_max=_row_max, probs=_exp_shifted(torch.exp2),
                           round_p=round_p, add_pv=_add_matmul)
    out = acc * (1.0 / l)[..., None]
    if v_descale is not None:
        out = out * v_descale
    return _finish(numerics.round_bf16(out.contiguous(), bf16_cvt), q.dtype)


BACKENDS = [
    Backend("emu_aiter_quant", emu_aiter_quant,
            Capabilities(vendors=ALL_VENDORS, dtypes=FLOAT_DTYPES, head_dims=(HEAD_DIM,), gqa=False, causal=False,
                         returns_lse=False, quantised=True, emulated=True, emulates="aiter_mha_v4",
                         experimental=True),  # opt-in: fails the quantised budget on outliers, as fp8 formats do
            "emulated aiter MHA v4 quantised attention (sglang AITER_QUANT formats: i8fp8, fp8, mxfp6, mxfp4, "
            "f6f4, f4f4); quantised",
            options={"format": "i8fp8", "arch": "gfx950", "p": "fp8", "bf16_cvt": 0, "clip": 1.0},
            option_values={"format": FORMAT_MEANINGS,
                           "arch": {"gfx950": "MI350/MI355X: all six formats, e4m3fn",
                                    "gfx942": "MI300: i8fp8 only, e4m3fnuz V, 64-key tiles"},
                           "p": P_ROUNDING, "bf16_cvt": BF16_CVT}),
]
