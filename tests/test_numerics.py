"""fluxlab.numerics: bf16 rounding modes on crafted bit patterns, int8/fp8 quantisers on hand-computed examples."""

import math

import pytest
import torch

from fluxlab import numerics
from fluxlab.numerics import RTNA, RTNE, RTZ, round_bf16


def f32(*bit_patterns):
    """float32 values from their bit patterns (unsigned 32-bit ints)."""
    ints = [b - (1 << 32) if b >= (1 << 31) else b for b in bit_patterns]
    return torch.tensor(ints, dtype=torch.int32).view(torch.float32)


def bits(x):
    return [(int(b) & 0xFFFFFFFF) for b in x.contiguous().view(torch.int32)]


# (input bits, RTNE, RTNA, RTZ) as bit patterns; bf16 keeps the top 16 bits.
CASES = [
    (0x3F800000, 0x3F800000, 0x3F800000, 0x3F800000),  # 1.0: exact
    (0x3F808000, 0x3F800000, 0x3F810000, 0x3F800000),  # tie, kept LSB even: RTNE down, RTNA away
    (0x3F818000, 0x3F820000, 0x3F820000, 0x3F810000),  # tie, kept LSB odd: RTNE up to even
    (0x3F808001, 0x3F810000, 0x3F810000, 0x3F800000),  # just above half
    (0x3F807FFF, 0x3F800000, 0x3F800000, 0x3F800000),  # just below half
    (0xBF808000, 0xBF800000, 0xBF810000, 0xBF800000),  # negative tie: symmetric (away = more negative)
    (0xBF818000, 0xBF820000, 0xBF820000, 0xBF810000),
    (0xBF80FFFF, 0xBF810000, 0xBF810000, 0xBF800000),  # negative: RTZ moves toward zero
    (0x00008000, 0x00000000, 0x00010000, 0x00000000),  # subnormal tie at the smallest bf16 subnormal
    (0x00018000, 0x00020000, 0x00020000, 0x00010000),  # subnormal tie, odd LSB
    (0x807FFFFF, 0x80800000, 0x80800000, 0x807F0000),  # largest negative subnormal rounds up into a normal
    (0x7F7FFFFF, 0x7F800000, 0x7F800000, 0x7F7F0000),  # max float32: overflows to inf except RTZ
    (0x7F7F8000, 0x7F800000, 0x7F800000, 0x7F7F0000),  # tie at the top of bf16's range
    (0x7F800000, 0x7F800000, 0x7F800000, 0x7F800000),  # +inf
    (0xFF800000, 0xFF800000, 0xFF800000, 0xFF800000),  # -inf
    (0x00000000, 0x00000000, 0x00000000, 0x00000000),  # +0
    (0x80000000, 0x80000000, 0x80000000, 0x80000000),  # -0 keeps its sign
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]:08x}" for c in CASES])
def test_bf16_modes_on_crafted_bit_patterns(case):
    source, *expected = case
    x = f32(source)
    for mode, want in zip((RTNE, RTNA, RTZ), expected):
        got = round_bf16(x, mode, fast=False)
        assert bits(got) == [want], f"mode {mode}: {bits(got)[0]:08x} != {want:08x}"
    assert bits(round_bf16(x, RTNE)) == [expected[0]]  # the fast path agrees


def test_nan_stays_nan_in_every_mode_even_when_truncation_would_give_inf():
    # 0x7F800001 is a NaN whose payload lives only in the low 16 bits: truncating its bits gives +inf.
    x = f32(0x7F800001, 0xFF800001, 0x7FC00000, 0x7FFFFFFF)
    for mode in (RTNE, RTNA, RTZ):
        out = round_bf16(x, mode, fast=False)
        assert torch.isnan(out).all(), mode
        assert [b >> 31 for b in bits(out)] == [0, 1, 0, 0]  # the sign survives


def test_rtne_bit_path_equals_torchs_cast_on_wide_random_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    x = x.view(torch.float32)
    x = x[~torch.isnan(x)]
    assert torch.equal(round_bf16(x, RTNE, fast=False).view(torch.int32),
                       x.to(torch.bfloat16).float().view(torch.int32))


def test_rtz_never_rounds_away_from_zero_and_often_agrees_with_rtne():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, generator=gen) * torch.exp(torch.randn(100_000, generator=gen) * 10)
    rtz, rtne, rtna = (round_bf16(x, m, fast=False) for m in (RTZ, RTNE, RTNA))
    assert (rtz.abs() <= rtne.abs()).all()
    assert (rtz.abs() <= x.abs()).all()
    assert (rtna.abs() >= rtz.abs()).all()
    same = (rtz == rtne).float().mean().item()
    assert 0.4 < same < 0.6  # RTNE rounds down (toward zero) for about half of random values
    assert (rtna == rtne).float().mean().item() > 0.999  # they differ only on exact ties


def test_every_mode_lands_on_a_neighbouring_bf16_value():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10_000, generator=gen) * 100
    for mode in (RTNE, RTNA, RTZ):
        out = round_bf16(x, mode)
        assert torch.equal(out, out.to(torch.bfloat16).float())  # representable in bf16
        assert ((out - x).abs() <= x.abs() * 2.0**-7).all()  # within one bf16 ulp


def test_mode_names_and_bad_modes():
    assert numerics.bf16_mode("rtz") == RTZ and numerics.bf16_mode("1") == RTNA and numerics.bf16_mode(0) == RTNE
    with pytest.raises(ValueError, match="0 \\(rtne\\), 1 \\(rtna\\), 2 \\(rtz\\)"):
        numerics.bf16_mode(3)
    with pytest.raises(TypeError, match="float32"):
        round_bf16(torch.ones(2, dtype=torch.float64))
    assert numerics.to_bf16(f32(0x3F808000), RTNA).dtype == torch.bfloat16


def test_int8_per_block_on_a_hand_computed_example():
    # One head, 4 tokens x 2 channels, blocks of 2 tokens.
    x = torch.tensor([[[[1.0, -2.0], [0.5, 127.0], [-0.3, 0.1], [0.0, 0.6]]]])
    ints, scales = numerics.quantise_int8_per_block(x, 2)
    # block 0: amax 127 -> scale 1; 0.5 is a tie and goes away from zero (1), -2 stays -2.
    # block 1: amax 0.6 -> scale 0.6/127; -0.3 -> -63.5 -> -64 (away); 0.1 -> 21.17 -> 21; 0.6 -> 127.
    assert scales.shape == (1, 1, 2)
    assert scales[0, 0, 0].item() == 1.0
    assert math.isclose(scales[0, 0, 1].item(), 0.6 / 127, rel_tol=1e-6)
    assert ints[0, 0].tolist() == [[1.0, -2.0], [1.0, 127.0], [-64.0, 21.0], [0.0, 127.0]]
    even, _ = numerics.quantise_int8_per_block(x, 2, rounding="half_even")
    assert even[0, 0, 1, 0].item() == 0.0  # 0.5 ties to even instead


def test_int8_multiplier_ragged_last_block_and_zero_block():
    x = torch.zeros(1, 1, 3, 2)
    x[0, 0, 0] = torch.tensor([2.0, -4.0])
    ints, scales = numerics.quantise_int8_per_block(x, 2, multiplier=0.5)  # x * 0.5: amax 2 -> scale 2/127
    assert ints.shape == (1, 1, 3, 2)
    assert ints[0, 0, 0].tolist() == [64.0, -127.0]  # 1 / (2/127) = 63.5 -> 64 (ties away)
    assert scales[0, 0, 1].item() == 0.0 and ints[0, 0, 2].tolist() == [0.0, 0.0]  # the ragged zero block
    assert numerics.expand_block_scales(scales, 2, 3).shape == (1, 1, 3)


def test_fp8_rounding_on_a_hand_computed_example():
    v = torch.tensor([448.0, -224.0, 100.0, 0.0])
    assert numerics.round_fp8(v, "e4m3fn").tolist() == [448.0, -224.0, 96.0, 0.0]  # 100: between 96 and 104
    assert numerics.fp8_dtype("e4m3fnuz") == torch.float8_e4m3fnuz
    with pytest.raises(ValueError, match="e4m3fn"):
        numerics.round_fp8(v, "e5m2x")


def test_in_place_roundings_give_the_copying_versions_bits():
    patterns = f32(*[case[0] for case in CASES], 0x7F800001, 0xFF800001, 0x7FC00000)
    x = torch.cat([patterns, torch.randn(4096) * 300, torch.rand(4096) * 1e-5])
    for mode in (RTNE, RTNA, RTZ):
        want, got = round_bf16(x, mode), numerics.round_bf16_(x.clone(), mode)
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        finite = ~torch.isnan(want)
        assert bits(got[finite]) == bits(want[finite]), mode
    assert torch.equal(numerics.round_fp16_(x[20:].clone()), numerics.round_fp16(x[20:]))
    in_range = x[20:].clamp(-200, 200)  # e4m3fnuz has no inf: beyond 240 gives NaN
    assert torch.equal(numerics.round_fp8_(in_range.clone(), "e4m3fnuz"), numerics.round_fp8(in_range, "e4m3fnuz"))
    y = x.clone()
    assert numerics.round_fp16_(y) is y  # in place: the same tensor comes back
    with pytest.raises(TypeError, match="contiguous"):
        numerics.round_bf16_(x.view(-1, 2).t())
    with pytest.raises(TypeError, match="float32"):
        numerics.round_fp16_(x.double())
