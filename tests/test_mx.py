"""fluxlab.mx against hand-worked examples: the OCP Microscaling spec's element grids (every E2M1 and E2M3 value,
ties, zeros, subnormals, saturation), E8M0 extremes, the OCP scale recipe and aiter MHA v4's three, the rotation,
and the per-tensor INT8 / FP8 quantisers. Every expected value below is worked out by hand in the comments, not
taken from the code under test."""

import math

import pytest
import torch

from fluxlab import mx


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# E2M1 (OCP MX v1.0, FP4): sign, 2 exponent bits (bias 1), 1 mantissa bit. Exponent 0 is subnormal: 0.m * 2^0.
# code: value  0:0  1:0.5 (subnormal)  2:1.0  3:1.5  4:2.0  5:3.0  6:4.0  7:6.0, codes 8..15 the negatives.
E2M1_BY_HAND = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def test_every_e2m1_code_decodes_to_the_spec_value_and_back():
    codes = torch.arange(16, dtype=torch.uint8)
    values = mx.decode_element(codes, "e2m1")
    assert values.tolist() == E2M1_BY_HAND
    assert torch.signbit(values[8]).item()  # code 8 is negative zero
    assert mx.encode_element(t(*E2M1_BY_HAND), "e2m1").tolist() == list(range(16))


def test_every_e2m3_value():
    # E2M3 (MXFP6): 2 exponent bits (bias 1), 3 mantissa bits. Exponent 0: m/8 (subnormals 0.125 .. 0.875);
    # exponent 1: 1 + m/8; exponent 2: 2 * (1 + m/8); exponent 3: 4 * (1 + m/8), the largest 4 * 1.875 = 7.5.
    by_hand = ([0, .125, .25, .375, .5, .625, .75, .875]
               + [1, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 1.875]
               + [2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75]
               + [4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5])
    codes = torch.arange(64, dtype=torch.uint8)
    values = mx.decode_element(codes, "e2m3")
    assert values[:32].tolist() == by_hand
    assert values[32:].tolist() == [-v for v in by_hand]
    assert mx.encode_element(t(*by_hand), "e2m3").tolist() == list(range(32))


# Midpoints of the E2M1 grid and where each tie goes. Ties to even: the neighbour whose code is even
# (0.25: 0 [code 0] vs 0.5 [1] -> 0; 0.75: 0.5 [1] vs 1 [2] -> 1; 1.25: 1 [2] vs 1.5 [3] -> 1; 1.75: 1.5 vs 2 [4]
# -> 2; 2.5: 2 [4] vs 3 [5] -> 2; 3.5: 3 [5] vs 4 [6] -> 4; 5: 4 [6] vs 6 [7] -> 4). Ties down: the smaller one.
# Ties away: the larger magnitude.
E2M1_TIES = [(0.25, 0.0, 0.0, 0.5), (0.75, 1.0, 0.5, 1.0), (1.25, 1.0, 1.0, 1.5), (1.75, 2.0, 1.5, 2.0),
             (2.5, 2.0, 2.0, 3.0), (3.5, 4.0, 3.0, 4.0), (5.0, 4.0, 4.0, 6.0)]


@pytest.mark.parametrize("tie,even,down,away", E2M1_TIES)
def test_e2m1_ties(tie, even, down, away):
    for sign in (1, -1):
        x = t(sign * tie)
        assert mx.round_element(x, "e2m1", ties="even").item() == sign * even
        assert mx.round_element(x, "e2m1", ties="down").item() == sign * down
        assert mx.round_element(x, "e2m1", ties="away").item() == sign * away
        # the V packer's trick (one ulp down, then nearest-even) is ties-down on a tie
        assert mx.round_e2m1_ties_down_native(x).item() == sign * down


def test_e2m1_off_tie_values_go_to_the_nearest():
    # 0.26 is past the 0.25 midpoint -> 0.5; 2.49 below the 2.5 midpoint -> 2; 4.9 -> 4; 5.1 -> 6
    assert mx.round_element(t(0.26, 2.49, 4.9, 5.1, 0.24), "e2m1").tolist() == [0.5, 2.0, 4.0, 6.0, 0.0]


def test_e2m3_ties_and_subnormals():
    # 0.0625 halves 0 [code 0] and 0.125 [1] -> 0; 0.1875 halves 0.125 [1] and 0.25 [2] -> 0.25;
    # 0.9375 halves 0.875 [7] and 1.0 [8] -> 1.0; 7.25 halves 7 [30] and 7.5 [31] -> 7.0.
    got = mx.round_element(t(0.0625, 0.1875, 0.9375, 7.25), "e2m3", ties="even").tolist()
    assert got == [0.0, 0.25, 1.0, 7.0]


def test_saturation_at_the_largest_element():
    # no infinity in either format: beyond the grid clamps to +-6 (E2M1) and +-7.5 (E2M3)
    assert mx.round_element(t(6.5, 7.0, 100.0, -1e30), "e2m1").tolist() == [6.0, 6.0, 6.0, -6.0]
    assert mx.round_element(t(7.75, 8.0, -9.0), "e2m3").tolist() == [7.5, 7.5, -7.5]


def test_zeros_keep_their_sign_and_nan_is_refused():
    codes = mx.encode_element(t(0.0, -0.0), "e2m1")
    assert codes.tolist() == [0, 8]
    with pytest.raises(ValueError, match="no NaN"):
        mx.encode_element(t(math.nan), "e2m1")


def test_e8m0_extremes():
    # E8M0: 2^(code - 127); 0 is the smallest (2^-127, a float32 subnormal), 254 the largest, 255 is NaN.
    values = mx.e8m0_to_float(torch.tensor([0, 1, 126, 127, 128, 254, 255], dtype=torch.uint8))
    assert values[:6].tolist() == [2.0**-127, 2.0**-126, 0.5, 1.0, 2.0, 2.0**127]
    assert math.isnan(values[6].item())


def test_ocp_scale_recipe():
    # OCP: X = 2^(floor(log2 amax) - emax); E2M1/E2M3 emax = 2, E4M3 emax = 8.
    # amax 6 -> floor(log2 6) = 2 -> 2^0 -> code 127; amax 1 -> 2^-2 -> 125; amax 7.99 -> 2^0 -> 127;
    # amax 8 -> 2^1 -> 128; zeros -> 127 (any scale).
    amax = t(6.0, 1.0, 7.99, 8.0, 0.0)
    assert mx.scale_code_ocp(amax, "e2m1").tolist() == [127, 125, 127, 128, 127]
    # E4M3: amax 448 -> floor(log2 448) = 8 -> 2^0 -> 127
    assert mx.scale_code_ocp(t(448.0), "e4m3fn").tolist() == [127]
    # the extremes clamp to the E8M0 range: 2^127 * 1.5 -> exponent 127 - 2 = 125 -> code 252; 2^-126 -> -128 -> 0
    assert mx.scale_code_ocp(t(1.5 * 2.0**127, 2.0**-126), "e2m1").tolist() == [252, 0]


def test_ocp_recipe_clips_the_block_maximum():
    # A block whose amax is 7 gets scale 1 (floor(log2 7) = 2): 7 itself saturates to 6 (the spec's clipping).
    block = torch.zeros(32)
    block[0], block[1] = 7.0, 1.0
    values, codes = mx.quantise_mx_blocks(block, "e2m1", "ocp")
    assert codes.tolist() == [127]
    assert values[:3].tolist() == [6.0, 1.0, 0.0]


def test_aiter_mxfp4_qk_scale_rounds_amax_over_6_up():
    # amax/6: 6 -> 1 (already a power of two: 127); 7 -> 1.1667 -> up to 2 (128); 12 -> 2 (128);
    # 12.5 -> 2.083 -> 4 (129); 0.75 -> 0.125 (124); 0 -> 0 (code 0)
    assert mx.scale_code_aiter_mxfp4_qk(t(6.0, 7.0, 12.0, 12.5, 0.75, 0.0)).tolist() == [127, 128, 128, 129, 124, 0]


def test_aiter_mxfp4_qk_never_saturates_where_ocp_does():
    block = torch.zeros(32)
    block[0] = 7.0  # aiter: scale 2 -> 3.5, a tie between 3 [code 5] and 4 [6] -> 4 (even) -> 8
    values, codes = mx.quantise_mx_blocks(block, "e2m1", "aiter_mxfp4_qk")
    assert codes.tolist() == [128] and values[0].item() == 8.0


def test_aiter_mxfp6_qk_scale_is_the_exponent_minus_two():
    # amax 1.0 (field 127) -> 125; 7.9 (field 129) -> 127; 0 -> 127
    assert mx.scale_code_aiter_mxfp6_qk(t(1.0, 7.9, 0.0)).tolist() == [125, 127, 127]


def test_aiter_mxfp4_v_scale():
    # exponent field - 2, +1 when the mantissa exceeds 1.5: amax 6 = 1.5 * 4 (field 129, not above) -> 127;
    # 6.5 = 1.625 * 4 -> 128; 1.0 -> 125; 0 -> max(0, 1e-12) = 1.0995 * 2^-40 (field 87) -> 85
    assert mx.scale_code_aiter_mxfp4_v(t(6.0, 6.5, 1.0, 0.0)).tolist() == [127, 128, 125, 85]


def sylvester(n):
    """The Sylvester Hadamard matrix by Kronecker products (float64): H_1 = [1], H_2n = [[H, H], [H, -H]]."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_hadamard128_is_the_sylvester_transform():
    # integer inputs keep every butterfly exact in float32, so the product with H_128 must match exactly
    x = torch.randint(-50, 50, (3, 128)).float()
    expected = (x.double() @ sylvester(128)).float()  # H is symmetric
    assert torch.equal(mx.hadamard128(x), expected)
    one_hot = torch.zeros(128)
    one_hot[1] = 1.0
    assert mx.hadamard128(one_hot).tolist() == [1.0, -1.0] * 64


def test_normalised_rotation_is_orthogonal():
    x = torch.randn(4, 128)
    twice = mx.hadamard128(mx.hadamard128(x) * mx.HADAMARD128_SCALE) * mx.HADAMARD128_SCALE
    torch.testing.assert_close(twice, x, rtol=0, atol=1e-5)
    # float32 nearest to 2^-3.5 = 0.0883883476...: bit pattern 0x3DB504F3 (sqrt(2)/16, sqrt 2 = 0x3FB504F3)
    assert torch.tensor(mx.HADAMARD128_SCALE).view(torch.int32).item() == 0x3DB504F3


def test_mxfp4_and_mxfp6_q_on_a_hand_worked_row():
    # x = 16 * e0: rotation -> 16 everywhere; * float32(1/sqrt 128) = 1.41421354 -> bf16 1.4140625
    # (1.0110101|0000..: the dropped bits start with 0, rounds down).
    x = torch.zeros(1, 128)
    x[0, 0] = 16.0
    values, codes = mx.quantise_mxfp4_qk(x)
    # amax/6 = 0.2357 -> up to 0.25 (code 125); 1.4140625 / 0.25 = 5.65625 -> above the 5 midpoint -> 6 -> 1.5
    assert codes.tolist() == [[125] * 4]
    assert values.unique().tolist() == [1.5]
    values, codes = mx.quantise_mxfp6_qk(x)
    # exponent of 1.4140625 is 0 -> scale 2^-2 (code 125); 5.65625 lies between 5.5 and 6 (midpoint 5.75) -> 5.5
    assert codes.tolist() == [[125] * 4]
    assert values.unique().tolist() == [1.375]


def test_q_multiplier_is_scale_times_log2e_in_float32():
    # 128^-0.5 * log2(e) = 0.08838834764831845 * 1.4426950408889634 = 0.12751743074...; float32 of it
    expected = torch.tensor(0.08838834764831845 * 1.4426950408889634, dtype=torch.float32).item()
    assert mx.q_multiplier(128**-0.5) == expected
    assert abs(expected - 0.1275174307) < 1e-8


def test_int8_per_tensor_ties_to_even_and_clip():
    # amax 127 -> scale 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, 126.5 -> 126 (all ties, to even)
    ints, scale = mx.quantise_int8_per_tensor(t(127.0, 0.5, 1.5, 2.5, -0.5, 126.5, -127.0))
    assert scale.item() == 1.0
    assert ints.tolist() == [127.0, 0.0, 2.0, 2.0, -0.0, 126.0, -127.0]
    # clip 0.5: the limit is 127 / 0.5 = 254, scale = 127 / 254 = 0.5; 127 / 0.5 = 254 clamps to 127, -254 to -128
    ints, scale = mx.quantise_int8_per_tensor(t(127.0, -127.0, 1.0), clip=0.5)
    assert scale.item() == 0.5
    assert ints.tolist() == [127.0, -128.0, 2.0]


def test_fp8_per_tensor():
    # amax 448 -> scale 1; 17 halves 16 (mantissa 000, even) and 18 (001) -> 16; 19 halves 18 and 20 -> 20
    values, scale = mx.quantise_fp8_per_tensor(t(448.0, 17.0, 19.0, 0.0))
    assert scale.item() == 1.0
    assert values.tolist() == [448.0, 16.0, 20.0, 0.0]
    # gfx942's e4m3fnuz has max 240: amax 240 -> scale 1
    values, scale = mx.quantise_fp8_per_tensor(t(240.0, 17.0), "e4m3fnuz")
    assert scale.item() == 1.0 and values.tolist() == [240.0, 16.0]


def test_fp8_v_per_channel_scale_and_the_zero_channel():
    v = torch.zeros(1, 2, 1, 128)
    v[0, 0, 0, 0], v[0, 1, 0, 0] = 448.0, -224.0  # channel 0: amax 448 -> scale 448 * float32(1/448)
    values, scales = mx.quantise_fp8_v_per_channel(v)
    scale0 = torch.tensor(448.0) * torch.tensor(1 / 448, dtype=torch.float32)
    assert scales[0, 0, 0].item() == scale0.item()
    assert torch.isnan(values[0, :, 0, 1:]).all()  # zero channels: 0 / 0, as the kernel divides


def test_mxfp4_v_blocks_run_along_the_sequence():
    # one channel, 64 tokens: tokens 0..31 hold 1.0 with one 6.0; tokens 32..63 hold 0.25.
    v = torch.zeros(1, 64, 1, 128)
    v[0, :32, 0, 0] = 1.0
    v[0, 5, 0, 0] = 6.0
    v[0, 32:, 0, 0] = 0.25
    values, codes = mx.quantise_mxfp4_v(v)
    # block 0: amax 6 -> code 127 (scale 1): 1 -> 1, 6 -> 6. block 1: amax 0.25 (field 125, mantissa 0) -> 123,
    # scale 2^-4: 0.25 * 16 = 4 -> 4 -> 0.25. Blocks 2, 3 are the zero padding up to 128 tokens.
    assert codes.shape == (1, 1, 128, 4)
    assert codes[0, 0, 0, :2].tolist() == [127, 123]
    assert values[0, :32, 0, 0].unique().tolist() == [1.0, 6.0]
    assert values[0, 32:, 0, 0].unique().tolist() == [0.25]


def test_triton_downcast_recipe_rounds_half_away():
    # block amax 6 -> scale 1 (code 127): 0.25 -> 0.5, 2.5 -> 3, 5 -> 6 (MHA v4's hardware path gives 0, 2, 4)
    block = torch.zeros(32)
    block[:4] = t(6.0, 0.25, 2.5, 5.0)
    values, codes = mx.quantise_mxfp4_downcast(block)
    assert codes.tolist() == [127] and values[:4].tolist() == [6.0, 0.5, 3.0, 6.0]
    values, _ = mx.quantise_mx_blocks(block, "e2m1", "aiter_mxfp4_qk", ties="even")
    assert values[:4].tolist() == [6.0, 0.0, 2.0, 4.0]
