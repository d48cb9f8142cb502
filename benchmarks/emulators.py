"""What the emulated kernels cost on this CPU, and what aiter's how_v3_bf16_cvt does to attention and images.

    .venv/bin/python benchmarks/emulators.py --out benchmarks/results/cpu

Writes ``emulators.json`` and ``emulators.md``:
- cost: each emulator on float32 inputs (S 1024, 4 heads, D 128) against torch's float32 SDPA on the same inputs
  (the kernel a float32 CPU lab runs otherwise) and the float32 math kernel; medians of interleaved repeats.
- attention: rel-L2 vs float64 and the mean signed error (bias toward zero shows as negative) of the three
  emulated aiter roundings on the three synthetic distributions (bf16 inputs, S 1024, 4 heads).
- images: the embedded FLUX.2 model from identical noise under sdpa, emu_bf16 and the three roundings (float64
  attention as the reference): PSNR, SSIM, final-latent rel-L2.
Timings are wall clock on a shared 2-core machine: read the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fluxlab.backends import emulated
from fluxlab.backends.reference import reference_attention
from fluxlab.compare.inputs import DISTRIBUTIONS, synthetic_qkv
from fluxlab.util import atomic_write, provenance, rel_l2

COST_SHAPE = dict(seq=1024, heads=4, head_dim=128)
EMULATORS = {
    "emu_bf16": (emulated.emu_bf16, {}),
    "emu_bf16:block_n=64": (emulated.emu_bf16, {"block_n": 64}),
    "emu_aiter:how_v3_bf16_cvt=0": (emulated.emu_aiter, {"how_v3_bf16_cvt": 0}),
    "emu_aiter:how_v3_bf16_cvt=1": (emulated.emu_aiter, {"how_v3_bf16_cvt": 1}),
    "emu_aiter:how_v3_bf16_cvt=2": (emulated.emu_aiter, {"how_v3_bf16_cvt": 2}),
    "emu_sage": (emulated.emu_sage, {}),
    "emu_aiter_sage": (emulated.emu_aiter_sage, {}),
}
MODES = (0, 1, 2)
IMAGE_BACKENDS = ["reference", "sdpa", "emu_bf16"] + [f"emu_aiter:how_v3_bf16_cvt={m}" for m in MODES]


def measure_cost(repeats: int) -> dict:
    q, k, v = synthetic_qkv(1, COST_SHAPE["seq"], COST_SHAPE["heads"], COST_SHAPE["head_dim"], "normal", 0)
    scale = COST_SHAPE["head_dim"] ** -0.5
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    calls = {
        "sdpa float32": lambda: F.scaled_dot_product_attention(qh, kh, vh, scale=scale),
        "math float32": lambda: torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * scale, -1) @ vh,
        **{name: (lambda fn=fn, o=o: fn(q, k, v, scale=scale, **o)) for name, (fn, o) in EMULATORS.items()},
    }
    times = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(repeats):  # interleaved, so load from other processes hits every kernel alike
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["sdpa float32"]
    return {"shape": COST_SHAPE, "repeats": repeats, "median_ms": medians,
            "x_sdpa_float32": {n: m / base for n, m in medians.items()},
            "x_math_float32": {n: m / medians["math float32"] for n, m in medians.items()}}


def measure_attention_modes() -> dict:
    rows = []
    scale = COST_SHAPE["head_dim"] ** -0.5
    for dist in DISTRIBUTIONS:
        q, k, v = (t.bfloat16() for t in synthetic_qkv(1, COST_SHAPE["seq"], COST_SHAPE["heads"],
                                                        COST_SHAPE["head_dim"], dist, 0))
        ref = reference_attention(q, k, v, scale=scale)
        for mode in MODES:
            for cvt_probs in (1, 0):
                out = emulated.emu_aiter(q, k, v, scale=scale, how_v3_bf16_cvt=mode, cvt_probs=cvt_probs).double()
                # signed error along the reference's sign: negative = pulled toward zero
                toward = ((out - ref) * ref.sign()).mean().item() / ref.abs().mean().item()
                rows.append({"distribution": dist, "how_v3_bf16_cvt": mode, "cvt_probs": cvt_probs,
                             "rel_l2_vs_fp64": rel_l2(out, ref), "mean_error_along_sign": toward})
        rows.append({"distribution": dist, "how_v3_bf16_cvt": None, "cvt_probs": None, "backend": "fp64 rounded to bf16",
                     "rel_l2_vs_fp64": rel_l2(ref.to(torch.bfloat16), ref), "mean_error_along_sign": None})
    return {"shape": COST_SHAPE, "dtype": "bfloat16", "rows": rows}


def measure_images(steps: int | None) -> dict:
    import fluxlab
    from fluxlab.compare import compare_images
    from fluxlab.widgets import settings_for

    settings = settings_for("embedded")
    pipe = fluxlab.load_flux2("embedded", **settings.load_kwargs())
    generation = settings.generation()
    if steps:
        generation["steps"] = steps
    result = compare_images(pipe, IMAGE_BACKENDS, seed=0, reference="reference", **generation)
    rows = [{"backend": r.backend, "psnr_db": r.psnr, "ssim": r.ssim, "final_latent_rel_l2": r.final_latent_rel_l2,
             "time_s": r.time_s, "error": r.error} for r in result.rows]
    return {"model": "embedded", "settings": result.settings, "reference": result.reference, "rows": rows}


def markdown(data: dict) -> str:
    cost = data["cost"]
    lines = [f"# Emulated kernels on this CPU ({data['provenance']['platform'].get('device_name', 'cpu')})", "",
             f"Cost at S {cost['shape']['seq']}, {cost['shape']['heads']} heads, D {cost['shape']['head_dim']}, "
             f"float32 inputs; median of {cost['repeats']} interleaved runs:", "",
             "| kernel | median ms | x sdpa float32 | x math float32 |", "|---|---|---|---|"]
    for name, ms in cost["median_ms"].items():
        lines.append(f"| {name} | {ms:.1f} | {cost['x_sdpa_float32'][name]:.2f} | {cost['x_math_float32'][name]:.2f} |")
    lines += ["", "aiter's how_v3_bf16_cvt, emulated (bf16 inputs; error vs float64; 'along sign' < 0: biased toward "
              "zero):", "", "| distribution | how_v3_bf16_cvt | P rounded too | rel-L2 vs fp64 | mean error along sign |",
              "|---|---|---|---|---|"]
    for row in data["attention"]["rows"]:
        mode = "fp64 rounded to bf16" if row["how_v3_bf16_cvt"] is None else row["how_v3_bf16_cvt"]
        along = "" if row["mean_error_along_sign"] is None else f"{row['mean_error_along_sign']:+.2e}"
        probs = "" if row["cvt_probs"] is None else ("yes" if row["cvt_probs"] else "no")
        lines.append(f"| {row['distribution']} | {mode} | {probs} | {row['rel_l2_vs_fp64']:.3e} | {along} |")
    if data.get("images"):
        images = data["images"]
        lines += ["", f"Embedded model, {images['settings'].get('steps')} steps, "
                  f"{images['settings'].get('height')}x{images['settings'].get('width')}, reference "
                  f"{images['reference']}:", "", "| backend | PSNR dB | SSIM | final latent rel-L2 |", "|---|---|---|---|"]
        for row in images["rows"]:
            lines.append(f"| {row['backend']} | {row['psnr_db']:.2f} | {row['ssim']:.5f} | "
                         f"{row['final_latent_rel_l2']:.3e} |")
    lines += ["", f"Command: `{data['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/cpu", help="folder for emulators.json / .md")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-images", action="store_true", help="skip the embedded-model image comparison")
    parser.add_argument("--steps", type=int, help="image denoising steps (default: the embedded model's)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = {"provenance": provenance(), "command": "python benchmarks/emulators.py " + " ".join(argv or sys.argv[1:]),
            "cost": measure_cost(args.repeats), "attention": measure_attention_modes()}
    if not args.no_images:
        data["images"] = measure_images(args.steps)
    write_results(Path(args.out), "emulators", data, markdown(data))
    return 0


def write_results(out: Path, stem: str, data: dict, table: str) -> None:
    """``stem``.json (``data``) and ``stem``.md (``table``) into ``out`` (created), atomically; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.json", json.dumps(data, indent=1, default=str) + "\n")
    atomic_write(out / f"{stem}.md", table)
    print(table)


if __name__ == "__main__":
    raise SystemExit(main())
