"""Which attention backends compile on first use, and the one warm-up generation that keeps compiling out of timings.

A warm-up is 1 denoising step at the size that will be timed (JIT kernels specialise on shapes: a smaller warm-up
would leave e.g. flex to compile again inside the timed run). Each (model, backend, size) is warmed once per process.
"""

from __future__ import annotations

import weakref

import torch

# Backend -> what compiles on its first call. flex is compiled on GPUs only (on the CPU it runs eagerly).
JIT_BACKENDS = {
    "fa4": "FlashAttention-4 compiles its CuTe DSL kernel",
    "flex": "torch.compile builds flex_attention's Triton kernel",
    "sage": "SageAttention compiles its Triton kernels",
    "aiter_triton": "aiter compiles its Triton kernels",
    "aiter_sage": "aiter compiles its Triton kernels",
}
_WARM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transformer -> {(backend, device, size, text)}


def jit_reason(backend: str, device) -> str | None:
    """Why ``backend`` compiles on its first call on ``device``, or None (nothing to warm up: e.g. every backend on
    the CPU, where flex runs eagerly)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cpu":
        return None
    return JIT_BACKENDS.get(backend.split(":", 1)[0])


def to_warm(backends, device, requested="auto") -> list[str]:
    """The backends to warm up: ``"auto"`` the JIT ones on ``device``; True all; False none; or the names given."""
    if requested == "auto":
        return [b for b in backends if jit_reason(b, device)]
    if requested is True:
        return list(backends)
    if not requested:
        return []
    wanted = set(requested)
    return [b for b in backends if b in wanted]


def _key(backend: str, device, height: int, width: int, text_tokens) -> tuple:
    return (backend, str(device), int(height), int(width), text_tokens)


def is_warm(transformer, backend: str, device, height: int, width: int, text_tokens=None) -> bool:
    return _key(backend, device, height, width, text_tokens) in _WARM.get(transformer, set())


def mark_warm(transformer, backend: str, device, height: int, width: int, text_tokens=None) -> None:
    _WARM.setdefault(transformer, set()).add(_key(backend, device, height, width, text_tokens))


def warmup_note(warmed: dict[str, float], already: list[str], height: int, width: int) -> str:
    """The label a timing carries, e.g. "fa4, flex: warmed up once (1 step at 1024x1024, 41.2 s) before timing"."""
    parts = []
    if warmed:
        parts.append(f"{', '.join(warmed)}: warmed up once (1 step at {width}x{height}, "
                     f"{sum(warmed.values()):.1f} s) before timing")
    if already:
        parts.append(f"{', '.join(already)}: already warm in this process")
    return "; ".join(parts) or "no warm-up needed (no backend here compiles on first use)"
