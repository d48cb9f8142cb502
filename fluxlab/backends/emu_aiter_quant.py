"""Emulated AMD aiter MHA v4 quantised attention (``emu_aiter_quant``, sglang's AITER_QUANT formats) in float32 on
any device. ``format=`` is one of the six combinations ``aiter.ops.mha_v4`` runs on gfx950 (``FORMATS``); the
quantisers are ``fluxlab.mx``. The kernel itself is closed assembly: the documented points, the ASSUMED ones (each
assumption an option where it is a choice), the sources and the validation are in docs/amd_quant.md.
Inputs of any float dtype are first rounded to bf16 (``mha_v4`` takes bf16 only); the output holds bf16 values in
the input dtype.
"""

from __future__ import annotations

import collections

import torch

from .. import mx, numerics
from .aiter import FORMAT_MEANINGS, MHA_V4_ARCH_FORMATS
from .base import FLOAT_DTYPES, Backend, Capabilities
from .emulated import (ALL_VENDORS, _add_matmul, _check_options, _exp_shifted, _finish, _flash,
                       _keep, _row_max)

HEAD_DIM = 128
# How one MHA v4 combination quantises Q/K ("int8", "fp8", "mxfp6", "mxfp4") and V ("fp8_tensor", "fp8_channel",
# "mxfp4"); aiter's format names for it: aiter.MHA_V4_FORMATS.
Format = collections.namedtuple("Format", "qk v")
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
        return mx.quantise_int8_per_tensor(heads_first, clip)
    if kind == "fp8":
        return mx.quantise_fp8_per_tensor(heads_first, fp8)
    quantise = mx.quantise_mxfp4_qk if kind == "mxfp4" else mx.quantise_mxfp6_qk
    return quantise(heads_first.contiguous(), multiplier)[0], None


def _quantise_v(v: torch.Tensor, kind: str, fp8: str):
    """[B, S, H, 128] -> (values [B, H, S, 128] float32, descale to apply to the output: None, 0-d or [B, H, 1, D])."""
    if kind == "fp8_tensor":
        values, scale = mx.quantise_fp8_per_tensor(v, fp8)
    elif kind == "fp8_channel":
        values, scale = mx.quantise_fp8_v_per_channel(v, fp8)
        scale = scale[:, :, None, :]
    else:
        values, scale = mx.quantise_mxfp4_v(v)[0], None
    return values.transpose(1, 2), scale


def emu_aiter_quant(q, k, v, *, scale, causal=False, return_lse=False, format="i8fp8", arch="gfx950", p="fp8",
                    bf16_cvt=0, clip=1.0):
    """aiter MHA v4 with quantised Q/K/V (``format``: one of ``FORMATS``, docs/amd_quant.md) in float32."""
    _check_options(format=(format, set(FORMATS)), arch=(arch, set(ARCHES)), p=(p, set(P_ROUNDING)),
                   bf16_cvt=(bf16_cvt, set(BF16_CVT)))
    if format not in ARCHES[arch]["formats"]:
        raise ValueError(f"aiter MHA v4 has no {arch} kernel for format={format} (its {arch} manifest lists "
                         f"{sorted(ARCHES[arch]['formats'])}); use arch=gfx950")
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
    factor = None
    if q_scale is not None:  # per-tensor rows: one float32 factor on the integer / fp8 products
        float32 = torch.float32
        factor = ((q_scale * k_scale) * torch.tensor(scale, dtype=float32) * torch.tensor(mx.LOG2E, dtype=float32))
        factor = factor.to(q.device)

    def logits(rows):
        s = torch.matmul(qh[:, :, rows], kh.transpose(-1, -2))
        return s.mul_(factor) if factor is not None else s

    round_p = {"fp8": lambda x: numerics.round_fp8_(x, fp8), "bf16": numerics.round_bf16_, "fp32": _keep}[p]
    acc, l, _ = _flash(q.shape[1], vh, logits=logits, block_n=ARCHES[arch]["kv_tile"], exp=torch.exp2, causal=False,
                       block_max=_row_max, probs=_exp_shifted(torch.exp2), round_p=round_p, add_pv=_add_matmul)
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
