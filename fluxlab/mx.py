"""Microscaling (MX) and per-tensor quantisers as AMD aiter's MHA v4 attention computes them, in float32 on any
device: E2M1 / E2M3 elements, E8M0 block scales (the OCP recipe and aiter's three), INT8 / FP8 per-tensor and
per-channel scaling, and the 128-point Walsh–Hadamard rotation.

Each recipe and the aiter source it follows (commit e4048607a535) is described in docs/amd_quant.md ("The
quantisers"). Functions return *values* (float32 tensors holding exactly the numbers the kernel's codes stand for)
and, where a kernel stores them, the E8M0 scale bytes; packing into aiter's tile layouts is not modelled.
"""

from __future__ import annotations

import math

import torch

from . import numerics

# Element grids (non-negative magnitudes in code order: the magnitude bits of code k stand for GRID[k]).
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# E2M3: bias 1; exponent 0 is subnormal (m/8), exponents 1..3 give (1 + m/8) * 2**(e-1).
E2M3_GRID = tuple(m / 8 for m in range(8)) + tuple((1 + m / 8) * 2.0 ** (e - 1) for e in (1, 2, 3) for m in range(8))
ELEMENT_GRIDS = {"e2m1": E2M1_GRID, "e2m3": E2M3_GRID}
SIGN_BIT = {"e2m1": 0x8, "e2m3": 0x20}
# emax of each element format (exponent of its largest normal): the OCP scale is 2**(floor(log2 amax) - emax).
ELEMENT_EMAX = {"e2m1": 2, "e2m3": 2, "e4m3fn": 8, "e4m3fnuz": 7}
E8M0_BIAS = 127
E8M0_NAN = 0xFF
MX_BLOCK = 32
HEAD_DIM = 128
# float32(1/sqrt(128)): the constant aiter's rotation multiplies by (written 0.08838834764831845f in the kernel).
HADAMARD128_SCALE = torch.tensor(1 / math.sqrt(HEAD_DIM), dtype=torch.float32).item()
LOG2E = 1.4426950408889634  # aiter's MHA_V4_LOG2E
TIES = ("even", "down", "away")


def _grid(fmt: str) -> torch.Tensor:
    try:
        return torch.tensor(ELEMENT_GRIDS[fmt], dtype=torch.float64)
    except KeyError:
        raise ValueError(f"element format {fmt!r} is not one of {sorted(ELEMENT_GRIDS)}") from None


def encode_element(x: torch.Tensor, fmt: str = "e2m1", *, ties: str = "even") -> torch.Tensor:
    """``x`` (float32, already divided by its block scale) -> element codes (uint8: sign bit over the magnitude
    index): nearest grid value, saturating at the largest. ``ties``: "even" (IEEE), "down" (smaller magnitude) or
    "away" (larger). Zero and -0 encode as +0 and -0; NaN is refused (these formats cannot hold it)."""
    if ties not in TIES:
        raise ValueError(f"ties={ties!r} is not one of {TIES}")
    if torch.isnan(x).any():
        raise ValueError(f"{fmt} has no NaN; the input holds NaN")
    grid = _grid(fmt).to(x.device)
    magnitude = x.double().abs()
    upper = torch.searchsorted(grid, magnitude).clamp(max=len(grid) - 1)  # first grid value >= |x|, or the top
    lower = (upper - 1).clamp(min=0)
    exact_or_top = (grid[upper] <= magnitude) | (upper == 0)
    midpoint = (grid[lower] + grid[upper]) / 2  # exact in float64
    tie_up = (upper % 2) == 0 if ties == "even" else torch.full_like(upper, ties == "away", dtype=torch.bool)
    pick_upper = (magnitude > midpoint) | ((magnitude == midpoint) & tie_up)
    index = torch.where(exact_or_top | pick_upper, upper, lower)
    return (index | torch.signbit(x).to(torch.int64) * SIGN_BIT[fmt]).to(torch.uint8)


def decode_element(codes: torch.Tensor, fmt: str = "e2m1") -> torch.Tensor:
    """Element codes (uint8) -> their float32 values."""
    codes = codes.to(torch.int64)
    magnitude = _grid(fmt).float().to(codes.device)[codes & (SIGN_BIT[fmt] - 1)]
    return torch.where((codes & SIGN_BIT[fmt]) != 0, -magnitude, magnitude)


def round_element(x: torch.Tensor, fmt: str = "e2m1", *, ties: str = "even") -> torch.Tensor:
    """``x`` rounded to the element grid (``encode_element`` then ``decode_element``), as float32."""
    return decode_element(encode_element(x, fmt, ties=ties), fmt)


def round_e2m1_ties_down_native(x: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP4 V encoder: every non-zero magnitude one float32 ulp smaller, then round to nearest even (a tie
    goes to the smaller magnitude; a value one ulp above a midpoint lands on it and goes to the even code)."""
    bits = x.float().contiguous().view(torch.int32)
    magnitude = bits & 0x7FFFFFFF
    nudged = (bits & numerics._SIGN) | (magnitude - (magnitude != 0).to(torch.int32))
    return round_element(nudged.view(torch.float32), "e2m1", ties="even")


# ----------------------------------------------------------------------------------------------- E8M0 scales


def e8m0_to_float(codes: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> 2**(code - 127) as float32 (code 255 is NaN; code 0 is 2**-127, a float32 subnormal)."""
    values = torch.exp2(codes.to(torch.float64) - E8M0_BIAS).float()
    return torch.where(codes.to(torch.int64) == E8M0_NAN, torch.full_like(values, math.nan), values)


def _exponent_field(x: torch.Tensor) -> torch.Tensor:
    return (x.float().contiguous().view(torch.int32) >> 23) & 0xFF


def scale_code_ocp(amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """The OCP MX recipe ``2**(floor(log2 amax) - emax)`` as an E8M0 byte in [0, 254]; a zero block gets 2**0.
    Subnormal block maxima are refused (they have no exponent field)."""
    amax = amax.float()
    if ((amax > 0) & (amax < torch.finfo(torch.float32).tiny)).any():
        raise ValueError("scale_code_ocp takes normal float32 block maxima (a subnormal amax has no exponent field)")
    code = (_exponent_field(amax) - 127 - ELEMENT_EMAX[fmt] + E8M0_BIAS).clamp(0, 254)
    return torch.where(amax == 0, torch.full_like(code, E8M0_BIAS), code).to(torch.uint8)


def scale_code_aiter_mxfp4_qk(amax: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP4 Q/K scale: ``amax / 6`` (float32) rounded *up* to a power of two; a zero block gets code 0."""
    bits = (amax.float() / 6.0).contiguous().view(torch.int32)
    return (((bits + 0x007FFFFF) & 0x7F800000) >> 23).to(torch.uint8)


def scale_code_aiter_mxfp6_qk(amax: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP6 Q/K scale: the OCP recipe (exponent field - 2), 127 for a zero block. A block maximum below
    2**-125 (which wraps the kernel's unsigned byte) is refused: not modelled."""
    field = _exponent_field(amax)
    if ((amax != 0) & (field < 2)).any():
        raise ValueError("a block maximum below 2**-125 wraps aiter's MXFP6 scale byte; not modelled")
    return torch.where(amax == 0, torch.full_like(field, E8M0_BIAS), field - 2).to(torch.uint8)


V_AMAX_FLOOR = torch.tensor(1e-12, dtype=torch.float32).item()  # the MXFP4 V packer's max(amax, 1e-12)


def scale_code_aiter_mxfp4_v(amax: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP4 V scale: ``max(amax, 1e-12)``'s exponent field - 2, + 1 when its mantissa is above 1.5,
    clamped to [0, 255]."""
    bits = torch.clamp(amax.float(), min=V_AMAX_FLOOR).contiguous().view(torch.int32)
    code = ((bits >> 23) & 0xFF) - 2 + ((bits & 0x7FFFFF) > 0x400000).to(torch.int32)
    return code.clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- the rotation


def hadamard128(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Sylvester-ordered Walsh–Hadamard transform of the last axis (128) as aiter computes it:
    seven float32 butterfly stages (pair distance 1, 2, ..., 64). Times ``HADAMARD128_SCALE``: the rotation."""
    if x.shape[-1] != HEAD_DIM:
        raise ValueError(f"hadamard128 takes a last axis of {HEAD_DIM}, got {x.shape[-1]}")
    y = x.float()
    lead = y.shape[:-1]
    for half in (1, 2, 4, 8, 16, 32, 64):
        pairs = y.reshape(*lead, HEAD_DIM // (2 * half), 2, half)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2).reshape(*lead, HEAD_DIM)
    return y


def q_multiplier(softmax_scale: float) -> float:
    """aiter's ``mha_v4_q_multiplier``: ``softmax_scale * log2(e)``, handed to the kernel as float32."""
    return torch.tensor(softmax_scale * LOG2E, dtype=torch.float32).item()


def rotate_for_mx(x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """What aiter's MX Q/K quantisers take block maxima of: bf16 input rotated in float32, times 1/sqrt(128), times
    ``multiplier`` (two float32 products), rounded to bf16."""
    rotated = hadamard128(x.to(torch.bfloat16).float())
    scaled = rotated.mul_(HADAMARD128_SCALE).mul_(torch.tensor(multiplier, dtype=torch.float32))
    return numerics.round_bf16(scaled)


# ---------------------------------------------------------------------------------------------- block quantisers


_RECIPES = {"ocp": scale_code_ocp, "aiter_mxfp4_qk": scale_code_aiter_mxfp4_qk,
            "aiter_mxfp6_qk": scale_code_aiter_mxfp6_qk, "aiter_mxfp4_v": scale_code_aiter_mxfp4_v}


def quantise_mx_blocks(x: torch.Tensor, fmt: str, recipe: str, *, ties: str = "even") -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """Blocks of 32 along the last axis of ``x`` -> (dequantised float32 values, E8M0 codes [..., n/32]).
    ``recipe``: a key of ``_RECIPES``; elements ``x / scale`` rounded to ``fmt`` with ``ties`` ("native_down": the
    V packer's trick)."""
    if x.shape[-1] % MX_BLOCK:
        raise ValueError(f"the blocked axis must be a multiple of {MX_BLOCK}, got {x.shape[-1]}")
    if recipe not in _RECIPES:
        raise ValueError(f"MX scale recipe {recipe!r} is not ocp, aiter_mxfp4_qk, aiter_mxfp6_qk or aiter_mxfp4_v")
    blocks = x.float().unflatten(-1, (x.shape[-1] // MX_BLOCK, MX_BLOCK))
    amax = blocks.abs().amax(dim=-1)
    codes = _RECIPES[recipe](amax, fmt) if recipe == "ocp" else _RECIPES[recipe](amax)
    if recipe == "aiter_mxfp4_v":  # the packer multiplies by the exact reciprocal power of two
        normalised = blocks * ((254 - codes.to(torch.int32)) << 23).view(torch.float32)[..., None]
    else:  # the hardware conversion divides by the scale (a power of two: exact)
        normalised = blocks / e8m0_to_float(codes)[..., None]
    if ties == "native_down":
        elements = round_e2m1_ties_down_native(normalised)
    else:
        elements = round_element(normalised, fmt, ties=ties)
    return (elements * e8m0_to_float(codes)[..., None]).flatten(-2), codes


def quantise_mxfp4_qk(x: torch.Tensor, multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_mxfp4_q`` (``multiplier = q_multiplier(scale)``) / ``quantize_mxfp4_k`` (1.0): [..., 128]
    -> (values, codes [..., 4])."""
    return quantise_mx_blocks(rotate_for_mx(x, multiplier), "e2m1", "aiter_mxfp4_qk", ties="even")


def quantise_mxfp6_qk(x: torch.Tensor, multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_mxfp6_q`` / ``quantize_mxfp6_k``: [..., 128] -> (values, codes [..., 4])."""
    return quantise_mx_blocks(rotate_for_mx(x, multiplier), "e2m3", "aiter_mxfp6_qk", ties="even")


def quantise_mxfp4_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_v_mxfp4``: V [B, S, H, D] -> (values [B, S, H, D], codes [B, H, D, S/32]), one scale per
    channel and 32 tokens (the sequence zero-padded to a multiple of 128)."""
    seq = v.shape[1]
    channels_last = v.to(torch.bfloat16).float().permute(0, 2, 3, 1)  # [B, H, D, S]
    channels_last = torch.nn.functional.pad(channels_last, (0, -(-seq // HEAD_DIM) * HEAD_DIM - seq))
    values, codes = quantise_mx_blocks(channels_last, "e2m1", "aiter_mxfp4_v", ties="native_down")
    return values[..., :seq].permute(0, 3, 1, 2).contiguous(), codes


def quantise_mxfp4_downcast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's Triton ``downcast_to_mxfp(x, torch.uint8, axis=-1)`` (the MXFP4 Sage kernel's Q/K quantiser): MHA v4's
    MXFP4 Q/K scale, elements rounded half away from zero. [..., n] -> (values, codes [..., n/32])."""
    return quantise_mx_blocks(x.float(), "e2m1", "aiter_mxfp4_qk", ties="away")


def _per_tensor_scale(values: torch.Tensor, limit: float) -> torch.Tensor:
    scale = values.abs().amax() / torch.tensor(limit, dtype=torch.float32)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantise_int8_per_tensor(x: torch.Tensor, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_int8``: -> (integers ``rint(x / scale)`` clamped to [-128, 127] as float32, 0-d scale)."""
    values = x.to(torch.bfloat16).float()
    scale = _per_tensor_scale(values, 127.0 / clip)
    return torch.round(values / scale).clamp_(-128, 127), scale


def quantise_fp8_per_tensor(x: torch.Tensor, fmt: str = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_fp8``: -> (elements ``fp8(x * (1 / scale))`` as float32, 0-d scale)."""
    values = x.to(torch.bfloat16).float()
    scale = _per_tensor_scale(values, torch.finfo(numerics.fp8_dtype(fmt)).max)
    return numerics.round_fp8(values * (1.0 / scale), fmt), scale


def quantise_fp8_v_per_channel(v: torch.Tensor, fmt: str = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_v_fp8``: V [B, S, H, D] -> (fp8 values as float32 [B, S, H, D], scales [B, H, D]); an
    all-zero channel has scale 0 and NaN elements (0/0), as in the kernel."""
    values = v.to(torch.bfloat16).float()
    reciprocal_max = torch.tensor(1.0 / torch.finfo(numerics.fp8_dtype(fmt)).max, dtype=torch.float32)
    scales = values.abs().amax(dim=1) * reciprocal_max  # [B, H, D]
    return numerics.round_fp8(values / scales[:, None], fmt), scales


__all__ = ["E2M1_GRID", "E2M3_GRID", "ELEMENT_EMAX", "HADAMARD128_SCALE", "decode_element", "e8m0_to_float",
           "encode_element", "hadamard128", "q_multiplier", "quantise_fp8_per_tensor", "quantise_fp8_v_per_channel",
           "quantise_int8_per_tensor", "quantise_mx_blocks", "quantise_mxfp4_downcast", "quantise_mxfp4_qk",
           "quantise_mxfp4_v", "quantise_mxfp6_qk", "rotate_for_mx", "round_e2m1_ties_down_native", "round_element",
           "scale_code_aiter_mxfp4_qk", "scale_code_aiter_mxfp4_v", "scale_code_aiter_mxfp6_qk", "scale_code_ocp"]
