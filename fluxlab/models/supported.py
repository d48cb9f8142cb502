"""FLUX.2's supported attention backends, as data: the set a model allows unless the user widens or narrows it."""

from __future__ import annotations

from collections.abc import Iterable

# What every FLUX.2 attention call asks of a kernel: non-causal, no mask, no dropout, q/k/v [B, S, H, 128] in the
# model dtype (bf16 in practice), H_q = H_kv, and S_q != S_k in the Klein KV pipeline's cached steps. Every
# built-in backend below can serve that; the reason says why each is in the set. A backend registered with
# ``fluxlab.register_backend`` is not in it until the user opts in: ``allowed=FLUX2_BACKENDS | {"my_kernel"}``.
FLUX2_BACKEND_REASONS: dict[str, str] = {
    # The serving framework's FLUX.2 set (ANCHORS.md §3): TORCH_SDPA, FA, AITER, AITER_SAGE.
    "sdpa": "seed set; torch picks the kernel (bit-identical to diffusers' default `native`)",
    "fa": "seed set; the best FlashAttention generation installed for the arch",
    "aiter": "seed set; AMD's CK/assembly kernel, head_dim 128 bf16 is its fast path",
    "aiter_sage": "seed set; quantised (int8 Q/K, fp8 V) — judged against its own error budget",
    # Exact kernels that serve the same call.
    "sdpa_flash": "SDPA's FlashAttention-2 kernel (or CPU flash); exact",
    "sdpa_efficient": "SDPA's memory-efficient kernel; exact",
    "sdpa_cudnn": "SDPA's cuDNN kernel; exact, torch 2.11's own pick on Hopper",
    "sdpa_math": "SDPA's unfused math kernel; exact but materialises S x S scores (debugging, small sizes)",
    "fa2": "FlashAttention-2; exact",
    "fa3": "FlashAttention-3 (Hopper); exact",
    "fa4": "FlashAttention-4 (Hopper, Blackwell); exact, the fastest measured at FLUX.2 shapes",
    "aiter_triton": "AITER's Triton MHA (AMD; experimental on NVIDIA); exact",
    "flex": "FlexAttention; exact (compiled on GPU, eager on CPU)",
    "reference": "float64 attention; exact yardstick, slow",
    # Quantised.
    "sage": "SageAttention (int8 QK^T); quantised — judged against its own error budget",
    "fa3_fp8": "FlashAttention-3 FP8 (Hopper; e4m3 Q/K/V/P); quantised",
    "sage2": "SageAttention 2's Hopper kernel (int8 QK^T, fp8 PV); quantised",
    # Emulated: another kernel's rounding/quantisation points in float32 (backends/emulated.py), for the CPU lab.
    "emu_bf16": "emulated bf16 flash kernel (bf16 probabilities and output); exact class",
    "emu_aiter": "emulated AITER kernel with its how_v3_bf16_cvt output rounding; exact class",
    "emu_sage": "emulated SageAttention 1.0.6; quantised",
    "emu_aiter_sage": "emulated AITER Sage kernel (int8 Q/K, fp8 V and P); quantised",
    "emu_fa3_fp8": "emulated FlashAttention-3 FP8; quantised",
    "emu_sage2": "emulated SageAttention 2 sm90 kernel; quantised",
}

FLUX2_BACKENDS: frozenset[str] = frozenset(FLUX2_BACKEND_REASONS)


def resolve_allowed(allowed: Iterable[str] | None) -> frozenset[str]:
    """The canonical backend names a model allows (``None``: FLUX2_BACKENDS). Unknown names raise with a hint."""
    from ..registry import canonical_name

    if allowed is None:
        return FLUX2_BACKENDS
    if isinstance(allowed, str):
        allowed = [allowed]  # a bare string would otherwise be iterated letter by letter
    names = frozenset(canonical_name(name) for name in allowed)
    if not names:
        raise ValueError("allowed= is empty: a FLUX.2 model needs at least one attention backend, e.g. "
                         "allowed={'sdpa'} or FLUX2_BACKENDS")
    return names
