"""Bit-exact low-precision arithmetic in float32 for the emulators: bf16 roundings (aiter's three
``how_v3_bf16_cvt`` modes), fp16 / fp8 roundings and the Sage kernels' int8 per-block quantiser."""

from __future__ import annotations

import torch

# aiter's how_v3_bf16_cvt values, and the same modes by name.
RTNE, RTNA, RTZ = 0, 1, 2
BF16_MODES = {"rtne": RTNE, "rtna": RTNA, "rtz": RTZ}
BF16_MODE_NAMES = {RTNE: "round to nearest, ties to even", RTNA: "round to nearest, ties away from zero",
                   RTZ: "round toward zero (truncate)"}

_SIGN = -(2**31)  # 0x80000000 as an int32
_KEEP_HIGH = -(2**16)  # 0xFFFF0000 as an int32: the bits a bf16 keeps (sign, exponent, 7 mantissa bits)
_QUIET_NAN = 0x7FC00000

FP8_FORMATS = {"e4m3fn": torch.float8_e4m3fn, "e4m3fnuz": torch.float8_e4m3fnuz}


def bf16_mode(mode) -> int:
    """0/1/2 or 'rtne'/'rtna'/'rtz' -> 0/1/2, with an error that lists the choices."""
    if isinstance(mode, str) and mode.strip().lower() in BF16_MODES:
        return BF16_MODES[mode.strip().lower()]
    if isinstance(mode, (int, str)) and str(mode).strip() in ("0", "1", "2"):
        return int(mode)
    raise ValueError(f"bf16 rounding mode {mode!r} is not one of 0 (rtne), 1 (rtna), 2 (rtz)")


def round_bf16(x: torch.Tensor, mode=RTNE, *, fast: bool = True) -> torch.Tensor:
    """``x`` (float32) rounded to bf16 by ``mode`` on the bit pattern, returned as float32 holding bf16 values.

    The sign is kept (every mode is symmetric around zero); a mantissa carry bumps the exponent (overflow to inf
    for RTNE/RTNA, never for RTZ); subnormals round like normals; inf stays inf, NaN a quiet NaN. ``fast=False``
    forces the bit path for RTNE too (otherwise torch's cast, the same rounding).
    """
    mode = bf16_mode(mode)
    if x.dtype != torch.float32:
        raise TypeError(f"round_bf16 takes float32 (got {x.dtype}); convert with .float() first")
    if mode == RTNE and fast:  # torch's own cast is RTNE (tests check it bit for bit against the bit path)
        return x.to(torch.bfloat16).to(torch.float32)
    return _round_bits_(x.clone(memory_format=torch.contiguous_format), mode)


def round_bf16_(x: torch.Tensor, mode=RTNE) -> torch.Tensor:
    """In place: ``x`` (contiguous float32) becomes ``round_bf16(x, mode)``, bit for bit, without a float32 copy
    (the emulators round score-sized tensors)."""
    mode = bf16_mode(mode)
    _check_in_place(x)
    return x.copy_(x.to(torch.bfloat16)) if mode == RTNE else _round_bits_(x, mode)


def _round_bits_(x: torch.Tensor, mode: int) -> torch.Tensor:
    """The bit path, in place on a contiguous float32 tensor. Adding to the low bits of the sign-magnitude pattern
    rounds the magnitude; the carry reaches the sign bit only from a NaN pattern, which is replaced."""
    nan = torch.isnan(x)
    signs = x.view(torch.int32) & _SIGN if bool(nan.any()) else None
    bits = x.view(torch.int32)
    if mode == RTNE:  # half of the dropped range minus one, plus the kept LSB: ties go to the even neighbour
        bits.add_(0x7FFF + ((bits >> 16) & 1))
    elif mode == RTNA:  # ties (low bits == 0x8000) carry: away from zero
        bits.add_(0x8000)
    bits.bitwise_and_(_KEEP_HIGH)
    if signs is not None:  # truncating a NaN's bits could give inf
        bits.copy_(torch.where(nan, signs | _QUIET_NAN, bits))
    return x


def round_fp16_(x: torch.Tensor) -> torch.Tensor:
    """In place: ``x`` (contiguous float32) becomes ``round_fp16(x)``."""
    _check_in_place(x)
    return x.copy_(x.to(torch.float16))


def round_fp8_(x: torch.Tensor, fmt: str = "e4m3fn") -> torch.Tensor:
    """In place: ``x`` (contiguous float32) becomes ``round_fp8(x, fmt)``."""
    _check_in_place(x)
    return x.copy_(x.to(fp8_dtype(fmt)))


def _check_in_place(x: torch.Tensor) -> None:
    if x.dtype != torch.float32 or not x.is_contiguous():
        raise TypeError(f"in-place rounding takes a contiguous torch.float32 tensor (got {x.dtype}, "
                        f"contiguous={x.is_contiguous()}); use the copying version or .contiguous()")


def to_bf16(x: torch.Tensor, mode=RTNE) -> torch.Tensor:
    """``x`` converted to a torch.bfloat16 tensor with ``mode`` (exact: the values are already bf16)."""
    return round_bf16(x.float(), mode).to(torch.bfloat16)


def round_fp16(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest fp16 (ties to even, IEEE) -> float32."""
    return x.to(torch.float16).to(torch.float32)


def round_fp8(x: torch.Tensor, fmt: str = "e4m3fn") -> torch.Tensor:
    """float32 -> fp8 (torch's cast: nearest, ties to even) -> float32. ``fmt``: e4m3fn (OCP, NVIDIA and
    gfx950) or e4m3fnuz (gfx942/MI300)."""
    return x.to(fp8_dtype(fmt)).to(torch.float32)


def fp8_dtype(fmt: str) -> torch.dtype:
    try:
        return FP8_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"fp8 format {fmt!r} is not one of {sorted(FP8_FORMATS)}") from None


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Nearest integer, ties away from zero: ``x + 0.5 * sign(x)`` truncated, as both Sage kernels round to int8
    (SageAttention 1.0.6 ``quant_per_block.py``, aiter ``_general_quant_kernel``)."""
    return torch.trunc(x + torch.where(x >= 0, 0.5, -0.5))


_INT8_ROUNDINGS = {"half_away": round_half_away, "half_even": torch.round}


def quantise_int8_per_block(x: torch.Tensor, block: int, *, multiplier: float = 1.0,
                            rounding: str = "half_away") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of ``block`` tokens as the Sage kernels do it, in float32: ``x`` [B, H, S, D] times
    ``multiplier``, ``scale = amax(|x|) / 127`` per block, ``round(x / scale)`` (``rounding``: "half_away" or
    "half_even"). -> (integers as float32, scales [B, H, ceil(S / block)]); a zero block gets scale 0, integers 0."""
    if block < 1:
        raise ValueError(f"int8 block size must be >= 1, got {block}")
    if rounding not in _INT8_ROUNDINGS:
        raise ValueError(f"rounding {rounding!r} is not 'half_away' or 'half_even'")
    x = x.float() * multiplier if multiplier != 1.0 else x.float()
    batch, heads, seq, dim = x.shape
    blocks = -(-seq // block)
    tiles = torch.nn.functional.pad(x, (0, 0, 0, blocks * block - seq)).reshape(batch, heads, blocks, block * dim)
    scales = tiles.abs().amax(dim=-1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    ints = _INT8_ROUNDINGS[rounding](tiles / safe[..., None])
    return ints.reshape(batch, heads, blocks * block, dim)[:, :, :seq], scales


def expand_block_scales(scales: torch.Tensor, block: int, seq: int) -> torch.Tensor:
    """[B, H, nblocks] per-block scales -> [B, H, seq] per-token scales."""
    return scales.repeat_interleave(block, dim=-1)[..., :seq]


__all__ = ["BF16_MODES", "BF16_MODE_NAMES", "FP8_FORMATS", "RTNA", "RTNE", "RTZ", "bf16_mode", "expand_block_scales",
           "fp8_dtype", "quantise_int8_per_block", "round_bf16", "round_bf16_", "round_fp16", "round_fp16_",
           "round_fp8", "round_fp8_", "round_half_away", "to_bf16"]
