"""AMD AITER's CK/assembly flash attention (``aiter.flash_attn_func``), ROCm only.

Real path on MI300/MI350: ``aiter.flash_attn_func`` takes ``[B, S, H, D]`` and returns ``(out, lse)`` with
``return_lse=True``. Unlike one serving framework's adapter this passes ``softmax_scale`` explicitly and
returns the LSE, so it can serve ring attention. ``how_v3_bf16_cvt`` picks the assembly kernel's bf16
rounding (0 round-to-nearest-even, 1 round-to-nearest-away, aiter's default, 2 round-toward-zero).
"""

from __future__ import annotations

from .base import HALF_DTYPES, Backend, Capabilities, Requirement

BF16_ROUNDING_MODES = {0: "RTNE, round-to-nearest-even", 1: "RTNA, round-to-nearest-away (aiter default)",
                       2: "RTZ, round-toward-zero"}

AITER = Requirement("aiter", "amd-aiter",
                    "build aiter on a ROCm machine from ROCm's aiter repository (see docs/install.md: AMD); "
                    "PyPI's `aiter` is an unrelated package")
ROCM_ATTENTION_ARCHES = ("gfx90a", "gfx942", "gfx950")


def _check_rounding(how_v3_bf16_cvt):
    if how_v3_bf16_cvt not in BF16_ROUNDING_MODES:
        raise ValueError(f"how_v3_bf16_cvt must be one of {sorted(BF16_ROUNDING_MODES)} "
                         f"({BF16_ROUNDING_MODES}), got {how_v3_bf16_cvt!r}")


def bind_aiter():
    """Import aiter once (when a plan is made) and return the adapter around ``aiter.flash_attn_func``."""
    import aiter

    flash_attn_func = aiter.flash_attn_func

    def aiter_attention(q, k, v, *, scale, causal=False, return_lse=False, how_v3_bf16_cvt=1):
        _check_rounding(how_v3_bf16_cvt)
        result = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal,
                                 return_lse=return_lse, return_attn_probs=False, how_v3_bf16_cvt=how_v3_bf16_cvt)
        if not return_lse:
            return result[0] if isinstance(result, tuple) else result
        out, lse = result[0], result[1]
        return out, lse.float()
    return aiter_attention


def aiter_attention(q, k, v, *, how_v3_bf16_cvt=1, **kwargs):
    """For callers of ``backend.fn``: binds on every call (plans bind once)."""
    _check_rounding(how_v3_bf16_cvt)
    return bind_aiter()(q, k, v, how_v3_bf16_cvt=how_v3_bf16_cvt, **kwargs)


BACKENDS = [
    Backend("aiter", aiter_attention,
            Capabilities(vendors=frozenset({"amd"}), arches={"amd": ROCM_ATTENTION_ARCHES},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True, stand_in_only=True),
            "AMD AITER flash attention (CK / hand-written assembly on MI300), ROCm only",
            requires=(AITER,), options={"how_v3_bf16_cvt": 1},
            option_values={"how_v3_bf16_cvt": BF16_ROUNDING_MODES}, binder=bind_aiter, priority={"amd": 10}),
]
