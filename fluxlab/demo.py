"""The README's demo: what runs here, every backend checked against float64, then FLUX.2 images side by side."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .backends.reference import reference_attention
from .defaults import DEFAULT_MODEL, DEFAULT_PROMPT
from .dispatch import attention
from .doctor import backends, doctor_text
from .errors import FluxlabError
from .util import rel_l2, time_calls

DEMO_PROMPT = DEFAULT_PROMPT  # a caption of the embedded model's kind: it draws the scene


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
            timed = time_calls(lambda: attention(q, k, v, backend=status.name), warmup=0, repeats=1)
            rows.append((status.name, rel_l2(timed.result, ref), timed.times_ms[0]))
        except FluxlabError as exc:
            rows.append((status.name, float("nan"), str(exc).splitlines()[0]))
    return rows


def exact_backends(device="cpu") -> list[str]:
    """FLUX.2 backends that run on ``device`` here and compute exact attention (no quantisation), sdpa first."""
    from .models import FLUX2_BACKENDS
    from .platform import platform_for_device

    statuses = backends(platform_for_device(torch.device(device)))
    names = [s.name for s in statuses
             if s.available and s.name in FLUX2_BACKENDS and not s.quantised and not s.experimental]
    return sorted(names, key=lambda name: (name != "sdpa", name))


def flux2_side_by_side(out_dir=None, *, source: str = DEFAULT_MODEL, variant: str | None = None, steps: int = 8,
                       size: int = 64, seed: int = 0, progress: bool = True) -> list:
    """A shipped FLUX.2 model (offline) once per exact backend from the same noise; grid + manifests in ``out_dir``.

    ``source="embedded"``: the small model trained in this repository (draws shapes); ``"tiny"``: random weights.
    """
    import numpy as np

    from .models.generate import environment, generate, image_grid, write_json, write_png
    from .models.load import load_flux2

    start = time.perf_counter()
    pipe = load_flux2(source, flux2_variant=variant)
    variant = "klein" if type(pipe).__name__.startswith("Flux2Klein") else "dev"
    load_s = time.perf_counter() - start
    results = generate(pipe, exact_backends(pipe.transformer.device), prompt=DEMO_PROMPT, seed=seed, steps=steps,
                       width=size, height=size, out_dir=Path(out_dir) if out_dir else None, progress=progress,
                       model_info={"source": source, "variant": variant, "load_s": round(load_s, 3)})
    first = np.asarray(results[0].image, dtype=np.int16)
    rows = [{"backend": r.backend, "generate_s": r.manifest["timings"]["generate_s"],
             "attention_calls": r.manifest["attention_calls"],
             "max_abs_diff_vs_first": int(np.abs(np.asarray(r.image, dtype=np.int16) - first).max())}
            for r in results]
    if out_dir:
        out = Path(out_dir)
        write_png(out / "grid.png", image_grid([r.image for r in results], [r.backend for r in results]))
        write_json(out / "manifest.json", {"demo": f"FLUX.2 {source} side by side", "source": source,
                                           "variant": variant, "steps": steps, "size": size, "seed": seed,
                                           "prompt": DEMO_PROMPT, "load_s": load_s, "backends": rows,
                                           "reference_backend": results[0].backend,
                                           "images": {r.backend: f"{r.backend}/image.png" for r in results},
                                           **environment()})
    return rows


def run_demo(out_dir: str | None = None, source: str = DEFAULT_MODEL, progress: bool = True) -> int:
    start = time.perf_counter()
    print(doctor_text())
    print("\nEvery available backend vs float64 (bf16, [1, 512, 4, 128]):")
    for name, error, ms in attention_smoke():
        timing = f"{ms:8.1f} ms" if isinstance(ms, float) else ms
        print(f"  {name:<14} rel-L2 {error:.2e}  {timing}")

    described = {"embedded": "the embedded model trained in this repository", "tiny": "random weights"}
    steps = 8 if source == "embedded" else 4
    print(f"\nFLUX.2, {described.get(source, source)} (offline), 64x64, {steps} steps, \"{DEMO_PROMPT}\": "
          "the same seed on every exact backend here")
    rows = flux2_side_by_side(out_dir, source=source, steps=steps, progress=progress)
    first = rows[0]["backend"]
    for row in rows:
        calls = ", ".join(f"{b} x{n}" for b, n in row["attention_calls"].items())
        print(f"  {row['backend']:<14} {row['generate_s']:7.3f} s   max |pixel diff| vs {first}: "
              f"{row['max_abs_diff_vs_first']:>3.0f}/255   attention calls: {calls}")
    if out_dir:
        print(f"  wrote {out_dir}/grid.png (side by side), {out_dir}/manifest.json and {out_dir}/<backend>/")
    print(f"\ndemo took {time.perf_counter() - start:.1f} s")
    return 0
