"""diffusers' attention-backend names that fluxlab does not run, each with the fluxlab backend to use instead.

The names of the kernels fluxlab does run are declared by their adapters (``Backend.diffusers``); these are the
rest, so that any diffusers name a user types gets an answer (``registry.canonical_name`` reads ``refusal``).
"""

from __future__ import annotations

# Kernels diffusers downloads from the Hugging Face Hub at run time -> (fluxlab backend to use, what it is).
HUB_KERNELS: dict[str, tuple[str, str]] = {
    "flash_hub": ("fa2", "FlashAttention-2"),
    "flash_varlen_hub": ("fa2", "FlashAttention-2 (varlen)"),
    "_flash_3_hub": ("fa3", "FlashAttention-3"),
    "_flash_3_varlen_hub": ("fa3", "FlashAttention-3 (varlen)"),
    "flash_4_hub": ("fa4", "FlashAttention-4"),
    "aiter_fa2_hub": ("aiter", "AMD AITER's CK FlashAttention-2"),
    "sage_hub": ("sage", "SageAttention"),
    "sage_blackwell_hub": ("sage", "SageAttention 3 for Blackwell"),
}

# diffusers backends with no fluxlab backend of the same family -> (nearest fluxlab backend or None, what it is).
NO_EQUIVALENT: dict[str, tuple[str | None, str]] = {
    "_native_npu": (None, "Ascend NPU attention (torch_npu)"),
    "_native_xla": (None, "XLA / TPU flash attention"),
    "xformers": ("sdpa_efficient", "xFormers' memory-efficient kernel"),
    "_sage_qk_int8_pv_fp8_cuda": ("sage", "SageAttention 2's CUDA kernel (int8 QK^T, fp8 PV)"),
    "_sage_qk_int8_pv_fp16_cuda": ("sage", "SageAttention 2's CUDA kernel (int8 QK^T, fp16 PV)"),
}


def refusal(name: str) -> str | None:
    """Why a diffusers backend name has no fluxlab backend here, naming the one to use; None if it maps."""
    key = name.strip().lower()
    if key in HUB_KERNELS:
        use, what = HUB_KERNELS[key]
        return (f"'{key}' is diffusers' Hugging Face Hub build of {what}, downloaded when it is first used; "
                f"fluxlab runs installed kernels only. Use fluxlab's '{use}' (fluxlab doctor says how to install "
                "it).")
    if key in NO_EQUIVALENT:
        nearest, what = NO_EQUIVALENT[key]
        use = f" The nearest fluxlab backend is '{nearest}'." if nearest else ""
        return f"diffusers' '{key}' is {what}; fluxlab has no backend of that kernel family.{use}"
    return None
