"""Microscaling (MX) and per-tensor quantisers as AMD aiter's MHA v4 attention computes them, in float32 on any
device: the E2M1 / E2M3 element grids, E8M0 block scales (the OCP recipe and aiter's three), INT8 and FP8
per-tensor / per-channel scaling, and the normalised 128-point Walsh–Hadamard rotation.

Source read (not copied): ROCm/aiter at commit e4048607a535 (2026-08-22), ``aiter/ops/mha_v4.py`` (which quantiser
each format uses, ``mha_v4_q_multiplier``), ``csrc/kernels/mha_v4_quant.cu`` (the fused rotate + MXFP4 / MXFP6 Q
and K quantisers), ``aiter/ops/triton/_triton_kernels/quant/sage_attention_quant.py`` (the per-tensor INT8/FP8
kernels, the per-channel FP8 V kernels, the MXFP4 V packer) and ``op_tests/test_mha_v4.py``. The element grids
and the OCP recipe follow the OCP Microscaling Formats (MX) v1.0 specification.

Every function returns *values* (float32 tensors holding exactly the numbers the kernel's codes stand for) and,
where a kernel stores them, the E8M0 scale bytes; packing into aiter's tile layouts is not modelled (it moves
bytes, not values).
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
    """``x`` (float32, already divided by its block scale) -> the element codes (uint8: sign bit over the
    magnitude index), rounding to the nearest grid value, saturating at the largest (these formats have no
    infinity). ``ties="even"``: a value exactly halfway goes to the even code (IEEE / hardware conversion);
    ``"down"``: to the smaller magnitude; ``"away"``: to the larger (round half away from zero). Zero and negative
    zero encode as +0 and -0. NaN is refused: these formats cannot hold it."""
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
    if ties == "even":
        tie_up = (upper % 2) == 0
    else:
        tie_up = torch.full_like(upper, ties == "away", dtype=torch.bool)
    pick_upper = (magnitude > midpoint) | ((magnitude == midpoint) & tie_up)
    index = torch.where(exact_or_top | pick_upper, upper, lower)
    sign = torch.signbit(x).to(torch.int64) * SIGN_BIT[fmt]
    return (index | sign).to(torch.uint8)


def decode_element(codes: torch.Tensor, fmt: str = "e2m1") -> torch.Tensor:
    """Element codes (uint8) -> their float32 values."""
    grid = _grid(fmt).float().to(codes.device)
    codes = codes.to(torch.int64)
    magnitude = grid[codes & (SIGN_BIT[fmt] - 1)]
    return torch.where((codes & SIGN_BIT[fmt]) != 0, -magnitude, magnitude)


def round_element(x: torch.Tensor, fmt: str = "e2m1", *, ties: str = "even") -> torch.Tensor:
    """``x`` rounded to the element grid (``encode_element`` then ``decode_element``), as float32."""
    return decode_element(encode_element(x, fmt, ties=ties), fmt)


def round_e2m1_ties_down_native(x: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP4 V encoder: every non-zero magnitude made one float32 ulp smaller, then the hardware's
    round-to-nearest-even conversion. A tie then goes to the smaller magnitude; a value exactly one ulp above a
    midpoint lands on the midpoint and goes to the even code (for bf16-derived inputs this cannot happen)."""
    bits = x.float().contiguous().view(torch.int32)
    magnitude = bits & 0x7FFFFFFF
    nudged = (bits & numerics._SIGN) | (magnitude - (magnitude != 0).to(torch.int32))
    return round_element(nudged.view(torch.float32), "e2m1", ties="even")


# ----------------------------------------------------------------------------------------------- E8M0 scales


def e8m0_to_float(codes: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> 2**(code - 127) as float32 (code 255 is NaN; code 0 is 2**-127, a float32 subnormal)."""
    exponent = codes.to(torch.float64) - E8M0_BIAS
    values = torch.exp2(exponent).float()
    return torch.where(codes.to(torch.int64) == E8M0_NAN, torch.full_like(values, math.nan), values)


def _exponent_field(x: torch.Tensor) -> torch.Tensor:
    return (x.float().contiguous().view(torch.int32) >> 23) & 0xFF


def scale_code_ocp(amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """The OCP MX recipe: ``2**(floor(log2 amax) - emax)`` as an E8M0 byte, clamped to [0, 254]; an all-zero block
    gets 2**0 (its elements are zero whatever the scale). Block maxima that are float32 subnormals are refused."""
    amax = amax.float()
    if ((amax > 0) & (amax < torch.finfo(torch.float32).tiny)).any():
        raise ValueError("scale_code_ocp takes normal float32 block maxima (a subnormal amax has no exponent field)")
    unbiased = _exponent_field(amax) - 127 - ELEMENT_EMAX[fmt]
    code = (unbiased + E8M0_BIAS).clamp(0, 254)
    return torch.where(amax == 0, torch.full_like(code, E8M0_BIAS), code).to(torch.uint8)


def scale_code_aiter_mxfp4_qk(amax: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP4 Q/K scale: ``amax / 6`` (one float32 division) rounded *up* to a power of two (its exponent
    field, plus one unless the mantissa is zero). Elements never exceed 6 after it, so nothing saturates; a zero
    block gets code 0."""
    bits = (amax.float() / 6.0).contiguous().view(torch.int32)
    return (((bits + 0x007FFFFF) & 0x7F800000) >> 23).to(torch.uint8)


def scale_code_aiter_mxfp6_qk(amax: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP6 Q/K scale: the exponent field of ``amax`` minus 2 (E2M3's emax), i.e. the OCP recipe; a zero
    block gets 127. Elements reach up to just below 8 and saturate at 7.5. The kernel's unsigned wrap for a block
    maximum below 2**-125 (exponent field < 2) is not modelled: refused."""
    field = _exponent_field(amax)
    if ((amax != 0) & (field < 2)).any():
        raise ValueError("a block maximum below 2**-125 wraps aiter's MXFP6 scale byte; not modelled")
    return torch.where(amax == 0, torch.full_like(field, E8M0_BIAS), field - 2).to(torch.uint8)


V_AMAX_FLOOR = torch.tensor(1e-12, dtype=torch.float32).item()  # the MXFP4 V packer's max(amax, 1e-12)


def scale_code_aiter_mxfp4_v(amax: torch.Tensor) -> torch.Tensor:
    """aiter's MXFP4 V scale: ``max(amax, 1e-12)``'s exponent field minus 2, plus one when its mantissa is above
    1.5 (so elements stay within [3, 6]: nothing saturates), clamped to [0, 255]."""
    safe = torch.clamp(amax.float(), min=V_AMAX_FLOOR)
    bits = safe.contiguous().view(torch.int32)
    field = (bits >> 23) & 0xFF
    code = field - 2 + ((bits & 0x7FFFFF) > 0x400000).to(torch.int32)
    return code.clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- the rotation


def hadamard128(x: torch.Tensor) -> torch.Tensor:
    """The unnormalised Sylvester-ordered Walsh–Hadamard transform of the last axis (128), float32, as aiter's
    kernel computes it: seven butterfly stages (pair distance 1, 2, 4, ..., 64), each ``(a + b, a - b)`` rounded to
    float32. Multiply by ``HADAMARD128_SCALE`` for the normalised (orthogonal) rotation."""
    if x.shape[-1] != HEAD_DIM:
        raise ValueError(f"hadamard128 takes a last axis of {HEAD_DIM}, got {x.shape[-1]}")
    y = x.float()
    lead = y.shape[:-1]
    half = 1
    while half < HEAD_DIM:
        pairs = y.reshape(*lead, HEAD_DIM // (2 * half), 2, half)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2).reshape(*lead, HEAD_DIM)
        half *= 2
    return y


def q_multiplier(softmax_scale: float) -> float:
    """aiter's ``mha_v4_q_multiplier``: ``softmax_scale * log2(e)`` (Python float), handed to the kernel as float32."""
    return torch.tensor(softmax_scale * LOG2E, dtype=torch.float32).item()


def rotate_for_mx(x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """The values aiter's MX Q/K quantisers take their block maxima of: bf16 input, the float32 rotation, then
    ``(rotated * 1/sqrt(128)) * multiplier`` (two float32 products) rounded to bf16 (nearest even)."""
    rotated = hadamard128(x.to(torch.bfloat16).float())
    scaled = rotated.mul_(HADAMARD128_SCALE).mul_(torch.tensor(multiplier, dtype=torch.float32))
    return numerics.round_bf16(scaled)


# ---------------------------------------------------------------------------------------------- block quantisers


def quantise_mx_blocks(x: torch.Tensor, fmt: str, recipe: str, *, ties: str = "even") -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """Blocks of 32 along the last axis of ``x`` (float32 values) -> (dequantised float32 values, E8M0 codes
    [..., n/32]). ``recipe``: "ocp", "aiter_mxfp4_qk", "aiter_mxfp6_qk" or "aiter_mxfp4_v"; the elements are
    ``x / scale`` rounded to ``fmt`` (saturating), ties by ``ties`` ("native_down" for the V packer's trick)."""
    if x.shape[-1] % MX_BLOCK:
        raise ValueError(f"the blocked axis must be a multiple of {MX_BLOCK}, got {x.shape[-1]}")
    blocks = x.float().unflatten(-1, (x.shape[-1] // MX_BLOCK, MX_BLOCK))
    amax = blocks.abs().amax(dim=-1)
    if recipe == "ocp":
        codes = scale_code_ocp(amax, fmt)
    elif recipe == "aiter_mxfp4_qk":
        codes = scale_code_aiter_mxfp4_qk(amax)
    elif recipe == "aiter_mxfp6_qk":
        codes = scale_code_aiter_mxfp6_qk(amax)
    elif recipe == "aiter_mxfp4_v":
        codes = scale_code_aiter_mxfp4_v(amax)
    else:
        raise ValueError(f"MX scale recipe {recipe!r} is not ocp, aiter_mxfp4_qk, aiter_mxfp6_qk or aiter_mxfp4_v")
    if recipe == "aiter_mxfp4_v":  # the packer multiplies by the exact reciprocal power of two
        reciprocal = ((254 - codes.to(torch.int32)) << 23).view(torch.float32)
        normalised = blocks * reciprocal[..., None]
    else:  # the hardware conversion divides by the scale (a power of two: exact)
        normalised = blocks / e8m0_to_float(codes)[..., None]
    if ties == "native_down":
        elements = round_e2m1_ties_down_native(normalised)
    else:
        elements = round_element(normalised, fmt, ties=ties)
    values = elements * e8m0_to_float(codes)[..., None]
    return values.flatten(-2), codes


def quantise_mxfp4_qk(x: torch.Tensor, multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_mxfp4_q`` (``multiplier = q_multiplier(scale)``) / ``quantize_mxfp4_k`` (1.0): rotate,
    scale, bf16, E2M1 per 32 channels with the round-up scale, hardware ties to even. [..., 128] -> (values,
    codes [..., 4])."""
    return quantise_mx_blocks(rotate_for_mx(x, multiplier), "e2m1", "aiter_mxfp4_qk", ties="even")


def quantise_mxfp6_qk(x: torch.Tensor, multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_mxfp6_q`` / ``quantize_mxfp6_k``: rotate, scale, bf16, E2M3 per 32 channels with the OCP
    scale (saturating at 7.5), hardware ties to even. [..., 128] -> (values, codes [..., 4])."""
    return quantise_mx_blocks(rotate_for_mx(x, multiplier), "e2m3", "aiter_mxfp6_qk", ties="even")


def quantise_mxfp4_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_v_mxfp4``: V [B, S, H, D] (bf16 values) -> (values [B, S, H, D], codes [B, H, D, S/32]):
    one E8M0 scale per channel and 32 consecutive tokens (the sequence zero-padded to a multiple of 128),
    elements E2M1 with ties to the smaller magnitude."""
    batch, seq, heads, dim = v.shape
    padded = -(-seq // HEAD_DIM) * HEAD_DIM
    channels_last = v.to(torch.bfloat16).float().permute(0, 2, 3, 1)  # [B, H, D, S]
    channels_last = torch.nn.functional.pad(channels_last, (0, padded - seq))
    values, codes = quantise_mx_blocks(channels_last, "e2m1", "aiter_mxfp4_v", ties="native_down")
    return values[..., :seq].permute(0, 3, 1, 2).contiguous(), codes


def quantise_mxfp4_downcast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's Triton ``downcast_to_mxfp(x, torch.uint8, axis=-1)`` (``aiter/ops/triton/moe/quant_moe.py``, the
    quantiser of the MXFP4 Sage kernel's rotated Q/K) with its default ROUND_UP scale: the same scale as MHA v4's
    MXFP4 Q/K (``amax / 6`` rounded up to a power of two) but elements rounded half away from zero (its bit
    arithmetic looks at the first dropped bit only), saturating at 6. [..., n] -> (values, codes [..., n/32])."""
    return quantise_mx_blocks(x.float(), "e2m1", "aiter_mxfp4_qk", ties="away")


def quantise_int8_per_tensor(x: torch.Tensor, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_int8``: ``scale = amax / float32(127 / clip)`` (1.0 for an all-zero tensor), integers
    ``rint(x / scale)`` (one float32 division, ties to even) clamped to [-128, 127]. -> (integers as float32,
    scale as a 0-d float32)."""
    values = x.to(torch.bfloat16).float()
    limit = torch.tensor(127.0 / clip, dtype=torch.float32)
    scale = values.abs().amax() / limit
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(values / scale).clamp_(-128, 127), scale


def quantise_fp8_per_tensor(x: torch.Tensor, fmt: str = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_fp8``: ``scale = amax / fp8_max`` (1.0 for zeros), elements ``fp8(x * (1 / scale))``
    (a float32 reciprocal, then a product; nearest even). -> (fp8 values as float32, 0-d scale)."""
    values = x.to(torch.bfloat16).float()
    limit = torch.tensor(torch.finfo(numerics.fp8_dtype(fmt)).max, dtype=torch.float32)
    scale = values.abs().amax() / limit
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return numerics.round_fp8(values * (1.0 / scale), fmt), scale


def quantise_fp8_v_per_channel(v: torch.Tensor, fmt: str = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """aiter's ``quantize_v_fp8``: V [B, S, H, D] -> (fp8 values as float32 [B, S, H, D], scales [B, H, D]) with
    ``scale = amax over the sequence * float32(1 / fp8_max)`` and elements ``fp8(v / scale)`` (float32 division).
    An all-zero channel has scale 0 and its elements 0/0 = NaN, as in the kernel (only that output channel)."""
    values = v.to(torch.bfloat16).float()
    reciprocal_max = torch.tensor(1.0 / torch.finfo(numerics.fp8_dtype(fmt)).max, dtype=torch.float32)
    scales = values.abs().amax(dim=1) * reciprocal_max  # [B, H, D]
    return numerics.round_fp8(values / scales[:, None], fmt), scales


__all__ = ["E2M1_GRID", "E2M3_GRID", "ELEMENT_EMAX", "HADAMARD128_SCALE", "decode_element", "e8m0_to_float",
           "encode_element", "hadamard128", "q_multiplier", "quantise_fp8_per_tensor", "quantise_fp8_v_per_channel",
           "quantise_int8_per_tensor", "quantise_mx_blocks", "quantise_mxfp4_downcast", "quantise_mxfp4_qk",
           "quantise_mxfp4_v", "quantise_mxfp6_qk", "rotate_for_mx", "round_e2m1_ties_down_native", "round_element",
           "scale_code_aiter_mxfp4_qk", "scale_code_aiter_mxfp4_v", "scale_code_aiter_mxfp6_qk", "scale_code_ocp"]
