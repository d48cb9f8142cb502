"""The README's demo: what runs here, then every runnable backend checked against float64."""

from __future__ import annotations

import time

import torch

from .backends.reference import reference_attention
from .dispatch import attention
from .doctor import backends, doctor_text
from .errors import FluxlabError


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def attention_smoke(seq: int = 512, heads: int = 4, head_dim: int = 128, dtype=torch.bfloat16, seed: int = 0):
    """Each available backend on one FLUX-like input: (name, rel-L2 vs float64, milliseconds or error)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, seq, heads, head_dim, generator=gen).to(dtype) for _ in range(3))
    ref = reference_attention(q, k, v, scale=head_dim**-0.5)
    rows = []
    for status in backends():
        if not status.available or status.name == "reference":
            continue
        try:
            start = time.perf_counter()
            out = attention(q, k, v, backend=status.name)
            rows.append((status.name, _rel_l2(out, ref), (time.perf_counter() - start) * 1e3))
        except FluxlabError as exc:
            rows.append((status.name, float("nan"), str(exc).splitlines()[0]))
    return rows


def run_demo(out_dir: str | None = None) -> int:
    print(doctor_text())
    print("\nEvery available backend vs float64 (bf16, [1, 512, 4, 128]):")
    for name, rel_l2, ms in attention_smoke():
        timing = f"{ms:8.1f} ms" if isinstance(ms, float) else ms
        print(f"  {name:<14} rel-L2 {rel_l2:.2e}  {timing}")
    return 0
