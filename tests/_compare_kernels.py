"""Deliberately broken (and one quantised) attention kernels for the comparison tests, written with torch only."""

import torch
import torch.nn.functional as F

TEXT_TOKENS = 16  # the boundary bug's idea of the text length


def _sdpa(q, k, v, scale):
    """Correct [B, S, H, D] attention through torch's SDPA."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          scale=scale).transpose(1, 2)


def wrong_scale(q, k, v, *, scale, causal=False, return_lse=False):
    return _sdpa(q, k, v, 1.0 / q.shape[-1])  # 1/D instead of 1/sqrt(D)


def layout_bhsd(q, k, v, *, scale, causal=False, return_lse=False):
    # Treats [B, S, H, D] as [B, H, S, D]: attends over heads; the output shape is still right.
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def kv_swapped(q, k, v, *, scale, causal=False, return_lse=False):
    return _sdpa(q, v, k, scale)


def head_dropped(q, k, v, *, scale, causal=False, return_lse=False):
    out = _sdpa(q, k, v, scale).clone()
    out[:, :, 1] = 0  # head 1 lost
    return out


def boundary_off_by_one(q, k, v, *, scale, causal=False, return_lse=False):
    # The text segment's keys are read one token late (k_i <- k_{i+1} for the text tokens).
    shifted = k.clone()
    shifted[:, :TEXT_TOKENS] = k[:, 1:TEXT_TOKENS + 1]
    return _sdpa(q, shifted, v, scale)


def nan_output(q, k, v, *, scale, causal=False, return_lse=False):
    out = _sdpa(q, k, v, scale).clone()
    out[0, 0, 0, 0] = float("nan")
    return out


def raises(q, k, v, *, scale, causal=False, return_lse=False):
    raise RuntimeError("kernel exploded: illegal memory access")


def short_output(q, k, v, *, scale, causal=False, return_lse=False):
    return _sdpa(q, k, v, scale)[:, :-1]


def scores_in_low_precision(q, k, v, *, scale, causal=False, return_lse=False):
    """A plausible but sloppy kernel: scores and probabilities rounded to the input dtype."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)) * scale  # rounded to the dtype
    return (torch.softmax(scores, dim=-1).to(q.dtype) @ vh).transpose(1, 2)


def int8_qk_fp8_p(q, k, v, *, scale, causal=False, return_lse=False, block=64):
    """Sage-like: q and k as int8 per 64-token block and head, P as fp8 e4m3 scaled per row to its range
    (448), accumulate in float32."""
    def int8(t):
        b, s, h, d = t.shape
        blocks = torch.nn.functional.pad(t.float(), (0, 0, 0, 0, 0, -s % block)).reshape(b, -1, block, h, d)
        amax = blocks.abs().amax(dim=(2, 4), keepdim=True).clamp_min(1e-12)
        return ((blocks / amax * 127).round() * amax / 127).reshape(b, -1, h, d)[:, :s]
    qh, kh, vh = (t.transpose(1, 2) for t in (int8(q), int8(k), v.float()))
    probs = torch.softmax((qh @ kh.transpose(-1, -2)) * scale, dim=-1)
    row_scale = 448.0 / probs.amax(dim=-1, keepdim=True)
    probs = (probs * row_scale).to(torch.float8_e4m3fn).float() / row_scale
    return (probs @ vh).transpose(1, 2).to(q.dtype)


BROKEN = {
    "broken_scale": wrong_scale,
    "broken_layout": layout_bhsd,
    "broken_kv_swap": kv_swapped,
    "broken_head": head_dropped,
    "broken_boundary": boundary_off_by_one,
}


# --- kernels a sceptic plants: each is "almost right" and passes a gate that only looks at the error size ---------


def _exact_float32(q, k, v, scale):
    return _sdpa(q.float(), k.float(), v.float(), scale)


def _round_directed(exact, dtype, toward):
    """``exact`` (float32) to ``dtype``, rounded toward +inf ("up") or toward zero ("zero") instead of to nearest."""
    low = exact.to(dtype)
    if toward == "up":
        step = low.float() < exact
        target = torch.full_like(low, float("inf"))
    else:
        step = low.float().abs() > exact.abs()
        target = torch.zeros_like(low)
    return torch.where(step, torch.nextafter(low, target), low)


def round_up(q, k, v, *, scale, causal=False, return_lse=False):
    """The exact output rounded toward +inf: every error has the same sign, each at most one unit."""
    return _round_directed(_exact_float32(q, k, v, scale), q.dtype, "up")


def round_to_zero(q, k, v, *, scale, causal=False, return_lse=False):
    """The exact output truncated (round toward zero), as aiter's how_v3_bf16_cvt=2 converts."""
    return _round_directed(_exact_float32(q, k, v, scale), q.dtype, "zero")


def ragged_tail_ignored(q, k, v, *, scale, causal=False, return_lse=False, tile=128):
    """Keys past the last multiple of 128 are never read (a tile loop without the remainder)."""
    keep = max(tile, k.shape[1] // tile * tile)
    return _sdpa(q, k[:, :keep], v[:, :keep], scale)


def batch_mixing(q, k, v, *, scale, causal=False, return_lse=False):
    """Every batch element after the first attends to batch 0's keys and values (a wrong batch stride)."""
    return _sdpa(q, k[:1].expand_as(k), v[:1].expand_as(v), scale)


def one_bad_head(q, k, v, *, scale, causal=False, return_lse=False, factor=1.01):
    """The last head's softmax scale is 1 % off (a per-head table read one entry wrong); the others are exact."""
    out = _sdpa(q, k, v, scale).clone()
    out[:, :, -1:] = _sdpa(q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], scale * factor)
    return out


def unsafe_softmax(q, k, v, *, scale, causal=False, return_lse=False):
    """exp of the scores without subtracting the row maximum, in fp16: fine on tame logits, inf/NaN where a logit
    passes ~11 (real DiT activations with outlier channels)."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    weights = torch.exp((qh @ kh.transpose(-1, -2) * scale).half()).float()
    return ((weights @ vh) / weights.sum(dim=-1, keepdim=True)).transpose(1, 2).to(q.dtype)


def hides_nan(q, k, v, *, scale, causal=False, return_lse=False):
    """Replaces NaN outputs by zero: float64 says the inputs were NaN, the kernel answers with numbers."""
    return torch.nan_to_num(_sdpa(q, k, v, scale), nan=0.0)


# Each fails compare_attention() with its defaults; the word the verdict's note must contain.
PLANTED = {
    "planted_round_up": (round_up, "biased"),
    "planted_round_to_zero": (round_to_zero, "biased"),
    "planted_ragged_tail": (ragged_tail_ignored, "rel_l2"),
    "planted_batch_mixing": (batch_mixing, "batch 1"),
    "planted_bad_head": (one_bad_head, "head 3"),
    "planted_unsafe_softmax": (unsafe_softmax, "NaN/inf values where float64 is finite"),
}
