"""emu_aiter_quant (fluxlab/backends/emu_aiter_quant.py): the six aiter MHA v4 formats, checked against an
independent one-block reference built from the hand-tested fluxlab.mx quantisers, refusals, options, tags."""

import pytest
import torch

import fluxlab
from fluxlab import errors, mx, numerics, registry
from fluxlab.backends import emu_aiter_quant as emu

FORMATS = ["i8fp8", "fp8", "mxfp6", "mxfp4", "f6f4", "f4f4"]
SCALE = 128**-0.5


def qkv(seq=128, heads=2, seed=0, dtype=torch.bfloat16, outliers=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, seq, heads, 128, generator=g) for _ in range(3))
    if outliers:  # a few large channels, as real Q/K have: what the rotation is for
        q[..., :4] *= 6
        k[..., :4] *= 6
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_l2(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def exact(q, k, v):
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * SCALE
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v.double())


def one_block_reference(q, k, v, fmt):
    """The same algorithm written out for one key block (<= 128 keys): plain, not online, softmax."""
    recipe = emu.FORMATS[fmt]
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    if recipe.qk == "int8":
        (qi, qs), (ki, ks) = mx.quantise_int8_per_tensor(qh), mx.quantise_int8_per_tensor(kh)
    elif recipe.qk == "fp8":
        (qi, qs), (ki, ks) = mx.quantise_fp8_per_tensor(qh), mx.quantise_fp8_per_tensor(kh)
    if recipe.qk in ("int8", "fp8"):
        factor = qs * ks * torch.tensor(SCALE, dtype=torch.float32) * torch.tensor(mx.LOG2E, dtype=torch.float32)
        s = (qi @ ki.transpose(-1, -2)) * factor
    else:
        quantise = mx.quantise_mxfp4_qk if recipe.qk == "mxfp4" else mx.quantise_mxfp6_qk
        s = quantise(qh.contiguous(), mx.q_multiplier(SCALE))[0] @ quantise(kh.contiguous())[0].transpose(-1, -2)
    p = torch.exp2(s - s.amax(-1, keepdim=True))
    l = p.sum(-1)
    p = numerics.round_fp8(p, "e4m3fn")
    if recipe.v == "mxfp4":
        vals, descale = mx.quantise_mxfp4_v(v)[0].transpose(1, 2), 1.0
    elif recipe.v == "fp8_channel":
        vals, scales = mx.quantise_fp8_v_per_channel(v)
        vals, descale = vals.transpose(1, 2), scales[:, :, None, :]
    else:
        vals, descale = mx.quantise_fp8_per_tensor(v)
        vals = vals.transpose(1, 2)
    out = (p @ vals) * (1.0 / l)[..., None] * descale
    return out.to(torch.bfloat16).transpose(1, 2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_the_one_block_reference(fmt):
    q, k, v = qkv(seq=96)
    out = emu.emu_aiter_quant(q, k, v, scale=SCALE, format=fmt)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    # the same float32 operations in another arrangement: at most one bf16 step apart
    torch.testing.assert_close(out.float(), one_block_reference(q, k, v, fmt).float(), rtol=2**-7, atol=1e-6)


def test_formats_order_as_their_bits_do():
    # more bits, less error: INT8 Q/K < MXFP6 < MXFP4; MXFP4 V adds error on top of FP8 V; all worse than bf16
    q, k, v = qkv(seq=384)
    ref = exact(q, k, v)
    err = {f: rel_l2(emu.emu_aiter_quant(q, k, v, scale=SCALE, format=f), ref) for f in FORMATS}
    bf16 = rel_l2(fluxlab.attention(q, k, v, backend="emu_bf16", scale=SCALE), ref)
    assert bf16 < min(err.values())
    assert err["i8fp8"] < err["mxfp6"] < err["mxfp4"]
    assert err["mxfp6"] < err["f6f4"] and err["mxfp4"] < err["f4f4"]
    assert max(err.values()) < 0.5  # still attention, not noise


def test_rotation_is_what_keeps_mxfp4_usable_on_outlier_channels():
    # the MX path rotates: a rotated Q/K with outlier channels loses much less than quantising it unrotated would
    q, k, v = qkv(seq=256)
    ref = exact(q, k, v)
    rotated = rel_l2(emu.emu_aiter_quant(q, k, v, scale=SCALE, format="mxfp4"), ref)
    # unrotated: pre-apply the inverse rotation (H is its own inverse up to the scale), which cancels the kernel's
    undo = mx.HADAMARD128_SCALE
    q_un = (mx.hadamard128(q.float()) * undo).to(torch.bfloat16)
    k_un = (mx.hadamard128(k.float()) * undo).to(torch.bfloat16)
    plain_ref = exact(q_un, k_un, v)
    unrotated = rel_l2(emu.emu_aiter_quant(q_un, k_un, v, scale=SCALE, format="mxfp4"), plain_ref)
    assert rotated < unrotated


def test_float32_inputs_give_bf16_values_in_float32():
    q, k, v = qkv(dtype=torch.float32)
    out = emu.emu_aiter_quant(q, k, v, scale=SCALE, format="mxfp4")
    assert out.dtype == torch.float32 and torch.equal(out, out.to(torch.bfloat16).float())


def test_options_change_the_rounding_points():
    q, k, v = qkv(seq=256)
    base = emu.emu_aiter_quant(q, k, v, scale=SCALE, format="i8fp8")
    assert not torch.equal(base, emu.emu_aiter_quant(q, k, v, scale=SCALE, format="i8fp8", arch="gfx942"))
    assert not torch.equal(base, emu.emu_aiter_quant(q, k, v, scale=SCALE, format="i8fp8", p="bf16"))
    assert not torch.equal(base, emu.emu_aiter_quant(q, k, v, scale=SCALE, format="i8fp8", clip=0.9))
    rtz = emu.emu_aiter_quant(q, k, v, scale=SCALE, format="i8fp8", bf16_cvt=2, p="fp32").float()
    rne = emu.emu_aiter_quant(q, k, v, scale=SCALE, format="i8fp8", bf16_cvt=0, p="fp32").float()
    assert (rtz.abs() <= rne.abs()).all() and not torch.equal(rtz, rne)


def test_gfx942_has_only_i8fp8():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="no gfx942 kernel for format=mxfp4"):
        emu.emu_aiter_quant(q, k, v, scale=SCALE, format="mxfp4", arch="gfx942")


def test_refusals_name_the_reason():
    backend = registry.get_backend("emu_aiter_quant")
    q, k, v = qkv()
    platform = fluxlab.platform.Platform.cpu()
    assert backend.not_supported_reasons(q, k, v, platform) == []
    reasons = backend.not_supported_reasons(q[..., :64], k[..., :64], v[..., :64], platform)
    assert any("head_dim 64" in r for r in reasons)
    assert any("causal" in r for r in backend.not_supported_reasons(q, k, v, platform, causal=True))
    assert any("log-sum-exp" in r for r in backend.not_supported_reasons(q, k, v, platform, return_lse=True))
    assert any("grouped-query" in r for r in backend.not_supported_reasons(q, k[:, :, :1], v[:, :, :1], platform))
    with pytest.raises(ValueError, match="head_dim 128 only"):
        emu.emu_aiter_quant(q[..., :64], k[..., :64], v[..., :64], scale=SCALE)


def test_format_option_is_checked_when_parsed():
    with pytest.raises(errors.FluxlabError, match="f4f4"):
        fluxlab.attention(*qkv(), backend="emu_aiter_quant:format=mxfp3", scale=SCALE)
    out = fluxlab.attention(*qkv(), backend="emu_aiter_quant:format=f6f4", scale=SCALE)
    assert out.shape == (1, 128, 2, 128)


def test_tagged_quantised_and_emulated_and_never_picked():
    caps = registry.get_backend("emu_aiter_quant").caps
    assert caps.quantised and caps.emulated and caps.emulates == "aiter_mha_v4"
    registry.get_backend(caps.emulates)  # the real adapter it models is registered
    assert fluxlab.dispatch.default_backend(*qkv()[:1]) != "emu_aiter_quant"
    line = next(line for line in fluxlab.doctor_text().splitlines() if line.startswith("emu_aiter_quant "))
    assert "emulates aiter_mha_v4" in line


def test_the_emulator_covers_exactly_the_formats_aiter_ships():
    from fluxlab.backends import aiter as aiter_mha_v4

    assert set(emu.FORMATS) == set(aiter_mha_v4.MHA_V4_FORMATS)
    kinds = {"int8": "INT8", "fp8": "FP8", "mxfp6": "MXFP6", "mxfp4": "MXFP4"}
    for name, recipe in emu.FORMATS.items():
        q_name, k_name, v_name = aiter_mha_v4.MHA_V4_FORMATS[name]
        assert q_name == k_name == kinds[recipe.qk]
        assert v_name == ("MXFP4" if recipe.v == "mxfp4" else "FP8")


def test_padded_backend_is_the_emulator_on_zero_padded_inputs():
    """emu_aiter_quant_pad128 (for models with head_dim < 128): the same numbers as padding by hand, the padded
    columns dropped, KV heads repeated for grouped-query inputs; registered on demand, tagged like the emulator."""
    name = registry.register_padded("emu_aiter_quant", 128)
    try:
        gen = torch.Generator().manual_seed(3)
        q, k, v = (torch.randn(1, 96, 4, 32, generator=gen) for _ in range(3))
        scale = 32**-0.5
        grow = (0, 96)
        for fmt in ("i8fp8", "mxfp4"):
            out = fluxlab.attention(q, k, v, backend=f"{name}:format={fmt}", scale=scale)
            by_hand = emu.emu_aiter_quant(*(torch.nn.functional.pad(t, grow) for t in (q, k, v)), scale=scale,
                                          format=fmt)
            assert out.shape == q.shape and torch.equal(out, by_hand[..., :32])
        gqa = fluxlab.attention(q, k[:, :, :2], v[:, :, :2], backend=f"{name}:format=f4f4", scale=scale)
        repeated = fluxlab.attention(q, k[:, :, :2].repeat_interleave(2, dim=2),
                                     v[:, :, :2].repeat_interleave(2, dim=2), backend=f"{name}:format=f4f4",
                                     scale=scale)
        assert torch.equal(gqa, repeated)
        caps = registry.get_backend(name).caps
        assert caps.quantised and caps.emulated and caps.emulates == "aiter_mha_v4" and not caps.causal
        with pytest.raises(errors.FluxlabError, match="f4f4"):
            fluxlab.attention(q, k, v, backend=f"{name}:format=mxfp3", scale=scale)
    finally:
        registry.unregister_backend(name)
