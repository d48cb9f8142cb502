"""What the emulated kernels cost on this CPU, and what aiter's how_v3_bf16_cvt does to attention and images.

    .venv/bin/python benchmarks/emulators.py --out benchmarks/results/cpu                # all three parts
    .venv/bin/python benchmarks/emulators.py --out benchmarks/results/cpu --parts cost   # re-measure the cost only

Writes ``emulators.json`` and ``emulators.md``:
- cost: each emulator on float32 inputs (S 1024, 4 heads, D 128) against the float32 kernel it wraps (the same loop
  with no rounding point, ``flash_float32`` below: all keys at once for emu_bf16/emu_aiter, which is the float32
  math kernel; key blocks of 64 for emu_sage and tiled emu_bf16, 128 for emu_aiter_sage), and against torch's
  float32 SDPA and math kernel; every kernel once per round, rounds interleaved, medians.
- attention: rel-L2 vs float64 and the mean signed error (bias toward zero shows as negative) of the three
  emulated aiter roundings on the three synthetic distributions (bf16 inputs, S 1024, 4 heads).
- images: the embedded FLUX.2 model from identical noise under sdpa, emu_bf16 and the three roundings (float64
  attention as the reference): PSNR, SSIM, final-latent rel-L2.
A part not measured (``--parts``) is kept from the ``emulators.json`` already in ``--out``, with the command and
provenance of the run that measured it (``sources``). Timings are wall clock on a shared 2-core machine: read the
ratios, not the milliseconds.
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
COST_TARGET = 3.0  # issue 13: "an emulator costs at most ~3x the float32 kernel it wraps at S 1024 on this CPU"
# name: (emulator, options, the float32 kernel it wraps)
EMULATORS = {
    "emu_bf16": (emulated.emu_bf16, {}, "flash float32"),
    "emu_bf16:block_n=64": (emulated.emu_bf16, {"block_n": 64}, "flash float32 block_n=64"),
    "emu_aiter:how_v3_bf16_cvt=0": (emulated.emu_aiter, {"how_v3_bf16_cvt": 0}, "flash float32"),
    "emu_aiter:how_v3_bf16_cvt=1": (emulated.emu_aiter, {"how_v3_bf16_cvt": 1}, "flash float32"),
    "emu_aiter:how_v3_bf16_cvt=2": (emulated.emu_aiter, {"how_v3_bf16_cvt": 2}, "flash float32"),
    "emu_sage": (emulated.emu_sage, {}, "flash float32 block_n=64"),
    "emu_aiter_sage": (emulated.emu_aiter_sage, {}, "flash float32 block_n=128"),
}
WRAPPED = {"flash float32": 0, "flash float32 block_n=64": 64, "flash float32 block_n=128": 128}
PARTS = ("cost", "attention", "images")
MODES = (0, 1, 2)
IMAGE_BACKENDS = ["reference", "sdpa", "emu_bf16"] + [f"emu_aiter:how_v3_bf16_cvt={m}" for m in MODES]


def flash_float32(q, k, v, *, scale, causal=False, block_n=0):
    """The float32 kernel the emulators wrap, with none of their rounding points: the inputs' values in float32,
    ``exp``, a float32 ``P.V`` over key blocks of ``block_n`` (0: all keys at once). The yardstick of what emulation
    costs; not a backend. Returns [B, S, H, D] float32."""
    groups = q.shape[2] // k.shape[2]
    qh = emulated._heads_first(q.float())
    kh, vh = emulated._heads_first(k.float(), groups), emulated._heads_first(v.float(), groups)

    def logits(rows):
        return torch.matmul(qh[:, :, rows], kh.transpose(-1, -2)).mul_(scale)

    acc, l, _ = emulated._flash(qh.shape[2], vh, logits=logits, block_n=int(block_n), exp=torch.exp, causal=causal,
                                block_max=emulated._row_max, probs=emulated._exp_shifted(torch.exp),
                                round_p=emulated._keep, add_pv=emulated._add_matmul)
    return (acc / l[..., None]).transpose(1, 2)


def measure_cost(rounds: int) -> dict:
    q, k, v = synthetic_qkv(1, COST_SHAPE["seq"], COST_SHAPE["heads"], COST_SHAPE["head_dim"], "normal", 0)
    scale = COST_SHAPE["head_dim"] ** -0.5
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    calls = {
        "sdpa float32": lambda: F.scaled_dot_product_attention(qh, kh, vh, scale=scale),
        "math float32": lambda: torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * scale, -1) @ vh,
        **{name: (lambda n=n: flash_float32(q, k, v, scale=scale, block_n=n)) for name, n in WRAPPED.items()},
        **{name: (lambda fn=fn, o=o: fn(q, k, v, scale=scale, **o)) for name, (fn, o, _) in EMULATORS.items()},
    }
    times = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    for _ in range(rounds):  # every kernel once per round, so load from other processes hits every kernel alike
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: statistics.median(t) for name, t in times.items()}
    wraps = {name: wrapped for name, (_, _, wrapped) in EMULATORS.items()}
    x_wrapped = {name: medians[name] / medians[wrapped] for name, wrapped in wraps.items()}
    return {"shape": COST_SHAPE, "rounds": rounds, "threads": torch.get_num_threads(), "median_ms": medians,
            "wraps": wraps, "target_x_wrapped": COST_TARGET, "x_wrapped": x_wrapped,
            "met": {name: x <= COST_TARGET for name, x in x_wrapped.items()},
            "x_sdpa_float32": {n: m / medians["sdpa float32"] for n, m in medians.items()},
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
             f"float32 inputs, {cost.get('threads', '?')} threads; median of {cost.get('rounds', cost.get('repeats'))} "
             "interleaved rounds. 'wraps': the "
             f"float32 kernel the emulator wraps (its loop with no rounding point); target <= {COST_TARGET}x "
             "that kernel:", "",
             "| kernel | wraps | median ms | x wrapped | x sdpa float32 | x math float32 |", "|---|---|---|---|---|---|"]
    for name, ms in cost["median_ms"].items():
        wrapped = cost.get("wraps", {}).get(name)
        x_wrapped = f"{cost['x_wrapped'][name]:.2f}" + ("" if cost["met"][name] else " (not met)") if wrapped else ""
        lines.append(f"| {name} | {wrapped or ''} | {ms:.1f} | {x_wrapped} | {cost['x_sdpa_float32'][name]:.2f} | "
                     f"{cost['x_math_float32'][name]:.2f} |")
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
    for part, source in data.get("sources", {}).items():
        git = source["provenance"].get("git") or {}
        lines.append(f"{part}: kept from `{source['command']}` ({source['provenance'].get('date', '?')[:10]}, commit "
                     f"{str(git.get('commit', '?'))[:12]}{' (dirty)' if git.get('dirty') else ''})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/cpu", help="folder for emulators.json / .md")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to measure, of {', '.join(PARTS)}; the others are kept from "
                             "the emulators.json in --out")
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=9,
                        help="timing rounds (each runs every kernel once)")
    parser.add_argument("--no-images", action="store_true", help="skip the embedded-model image comparison")
    parser.add_argument("--steps", type=int, help="image denoising steps (default: the embedded model's)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts {args.parts!r}: unknown {unknown}; choose from {', '.join(PARTS)}")
    if args.no_images:
        parts = [p for p in parts if p != "images"]
    out = Path(args.out)
    kept = [p for p in PARTS if p not in parts and not (p == "images" and args.no_images)]
    previous = json.loads((out / "emulators.json").read_text()) if kept and (out / "emulators.json").exists() else {}
    missing = [p for p in kept if p in ("cost", "attention") and p not in previous]
    if missing:
        parser.error(f"--parts {args.parts!r} keeps {missing} from {out / 'emulators.json'}, which "
                     f"{'lacks them' if previous else 'does not exist'}: measure them too (add them to --parts)")
    torch.manual_seed(0)
    data = {"provenance": provenance(), "command": "python benchmarks/emulators.py " + " ".join(argv or sys.argv[1:])}
    sources = dict(previous.get("sources", {}))
    for part in PARTS:
        if part in parts:
            data[part] = {"cost": lambda: measure_cost(args.rounds), "attention": measure_attention_modes,
                          "images": lambda: measure_images(args.steps)}[part]()
            sources.pop(part, None)
        elif part in kept and part in previous:
            data[part] = previous[part]
            sources.setdefault(part, {"command": previous["command"], "provenance": previous["provenance"]})
    sources = {part: source for part, source in sources.items() if part in data}
    if sources:
        data["sources"] = sources  # parts kept from an earlier run, with that run's command and provenance
    write_results(out, "emulators", data, markdown(data))
    return 0


def write_results(out: Path, stem: str, data: dict, table: str) -> None:
    """``stem``.json (``data``) and ``stem``.md (``table``) into ``out`` (created), atomically; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.json", json.dumps(data, indent=1, default=str) + "\n")
    atomic_write(out / f"{stem}.md", table)
    print(table)


if __name__ == "__main__":
    raise SystemExit(main())
