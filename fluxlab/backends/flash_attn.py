"""FlashAttention 2 (``flash_attn``), 3 (``flash_attn_interface``) and 4 (``flash_attn.cute``), plus ``fa``:
the best generation installed for this arch. All take ``[B, S, H, D]`` natively: no layout change.
"""

from __future__ import annotations

from ..platform import Platform
from .base import HALF_DTYPES, Backend, Capabilities, Requirement


def _split_lse(result, return_lse: bool):
    """FA releases differ in whether they return a tuple; normalise to ``out`` or ``(out, lse)``."""
    if isinstance(result, tuple):
        out, lse = result[0], result[1]
    else:
        out, lse = result, None
    if not return_lse:
        return out
    if lse is None:
        raise RuntimeError("the FlashAttention call returned no log-sum-exp although it was requested")
    return out, lse.float()


def fa2(q, k, v, *, scale, causal=False, return_lse=False):
    from flash_attn import flash_attn_func

    result = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=causal,
                             return_attn_probs=return_lse)  # -> (out, softmax_lse, S_dmask)
    return _split_lse(result, return_lse)


def fa3(q, k, v, *, scale, causal=False, return_lse=False):
    from flash_attn_interface import flash_attn_func

    # Early FA3 releases always return (out, lse); later ones only with return_attn_probs=True.
    try:
        result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_attn_probs=return_lse)
    except TypeError:
        result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)
    return _split_lse(result, return_lse)


def fa4(q, k, v, *, scale, causal=False, return_lse=False):
    from flash_attn.cute import flash_attn_func

    # Always returns (out, lse); lse is None under no_grad unless return_lse=True.
    result = flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, return_lse=return_lse)
    return _split_lse(result, return_lse)


def _multiple_of_8(name):
    def check(q, k, platform):
        return [] if q.shape[-1] % 8 == 0 else [f"{name} needs head_dim a multiple of 8, got {q.shape[-1]}"]
    return check


FA2 = Requirement("flash_attn", "flash-attn", "pip install flash-attn --no-build-isolation "
                  "(builds from source; ROCm: ROCm's flash-attention fork)")
FA3 = Requirement("flash_attn_interface", "flash-attn-3",
                  "build FlashAttention's hopper/ directory from source (python setup.py install)")
FA4 = Requirement("flash_attn.cute", "flash-attn-4", "pip install 'flash-attn-4>=4.0.0b1'")

BACKENDS = [
    Backend("fa2", fa2,
            Capabilities(vendors=frozenset({"nvidia", "amd"}),
                         arches={"nvidia": ("sm_80+",), "amd": ("gfx90a", "gfx942", "gfx950")},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
            "FlashAttention-2 (flash_attn.flash_attn_func)", requires=(FA2,)),
    Backend("fa3", fa3,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_90",)},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
            "FlashAttention-3, Hopper only (flash_attn_interface.flash_attn_func)", requires=(FA3,)),
    Backend("fa4", fa4,
            Capabilities(vendors=frozenset({"nvidia"}), arches={"nvidia": ("sm_90", "sm_100", "sm_103")},
                         dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
            "FlashAttention-4, CuTe DSL (flash_attn.cute.flash_attn_func), Hopper and Blackwell",
            requires=(FA4,), extra_checks=_multiple_of_8("fa4")),
]

# Which generation ``fa`` means, best first, per arch (FA4 measured fastest on H100/H200: README).
FA_PREFERENCE = {"sm_90": ("fa4", "fa3", "fa2"), "sm_100": ("fa4", "fa2"), "sm_103": ("fa4", "fa2")}
FA_DEFAULT_PREFERENCE = ("fa2",)


class BestFlashAttention(Backend):
    """``fa``: resolves to the best FlashAttention generation that can run the inputs."""

    def _candidates(self, platform: Platform) -> list[Backend]:
        from ..registry import get_backend

        names = FA_PREFERENCE.get(platform.arch, FA_DEFAULT_PREFERENCE)
        return [get_backend(name) for name in names]

    def resolve(self, q, k, platform: Platform, *, causal=False, return_lse=False) -> Backend | None:
        for candidate in self._candidates(platform):
            if not candidate.not_supported_reasons(q, k, k, platform, causal=causal, return_lse=return_lse):
                return candidate
        return None

    def not_supported_reasons(self, q, k, v, platform, *, causal=False, return_lse=False) -> list[str]:
        if self.resolve(q, k, platform, causal=causal, return_lse=return_lse):
            return []
        details = []
        for candidate in self._candidates(platform):
            reasons = candidate.not_supported_reasons(q, k, v, platform, causal=causal, return_lse=return_lse)
            details.append(f"{candidate.name}: {'; '.join(reasons)}")
        return ["no FlashAttention generation can run here (" + " | ".join(details) + ")"]

    def platform_reasons(self, platform: Platform) -> list[str]:
        per_gen = [(c.name, c.platform_reasons(platform)) for c in self._candidates(platform)]
        if any(not reasons for _, reasons in per_gen):
            return []
        return ["no FlashAttention generation is usable here (" +
                " | ".join(f"{name}: {'; '.join(r)}" for name, r in per_gen) + ")"]

    @property
    def version(self):
        return None


def _fa_dispatch(q, k, v, *, scale, causal=False, return_lse=False):
    raise RuntimeError("fa is resolved to a concrete generation by the dispatcher")


BACKENDS.append(BestFlashAttention(
    "fa", _fa_dispatch,
    Capabilities(vendors=frozenset({"nvidia", "amd"}), dtypes=HALF_DTYPES, max_head_dim=256, returns_lse=True),
    "the best FlashAttention generation installed for this arch (fa4 > fa3 > fa2 on Hopper)"))
