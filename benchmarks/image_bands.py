"""The image bands behind the image verdicts (``fluxlab.compare.bands``), on the embedded model (CPU).

    .venv/bin/python benchmarks/image_bands.py                     # -> benchmarks/results/cpu/image_bands.json
    python benchmarks/image_bands.py --card h100 --keep-outputs    # a GPU run -> benchmarks/results/h100/

At every prompt x seed: one generation per legitimate change (exact kernels reference/sdpa/sdpa_math and a rerun;
aiter's RTNE and RTNA bf16 conversions, bf16 inputs/output, a bf16 flash kernel over 64-key blocks) and every
pair's final-latent rel-L2, 1 - SSIM and pixel RMSE (``fluxlab.compare.measure_image_band``). Then kernels that are
not part of the band are judged by it, as information: aiter's round-toward-zero mode, a softmax scale 1 % too
large (exact class) and the same in a bf16 kernel (low-precision class), 10 % too large, and the quantised
emulators. tests/test_image_bands.py checks the file against the derivation and the rule.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# kernels judged by the band (not part of it): spec -> what it is
JUDGED = {
    "emu_aiter:how_v3_bf16_cvt=2": "aiter's bf16 conversions rounding toward zero (biased)",
    "band_scale_1pct": "sdpa with the softmax scale 1 % too large (exact class)",
    "band_scale_1pct_bf16": "emu_bf16 with the softmax scale 1 % too large (emulated class)",
    "band_scale_10pct_bf16": "emu_bf16 with the softmax scale 10 % too large (emulated class)",
    "emu_sage": "emulated SageAttention (int8 Q/K, fp16 P.V; quantised)",
}


def register_planted():
    import fluxlab

    def scaled(backend, factor):
        def kernel(q, k, v, *, scale, causal=False, return_lse=False, **options):
            return fluxlab.attention(q, k, v, backend=backend, scale=scale * factor, causal=causal)
        return kernel

    fluxlab.register_backend("band_scale_1pct", scaled("sdpa", 1.01), replace=True,
                             description=JUDGED["band_scale_1pct"])
    for name, factor in (("band_scale_1pct_bf16", 1.01), ("band_scale_10pct_bf16", 1.1)):
        fluxlab.register_backend(name, scaled("emu_bf16", factor), replace=True, description=JUDGED[name],
                                 emulated=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--card", default="cpu", help="results folder name: cpu, h100, h200")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<card>/image_bands.json")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--judge-seeds", default="0", help="seeds of the judged kernels (first prompt)")
    parser.add_argument("--max-sequence-length", type=int, default=32)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="float32", help="the pipeline's dtype (float32, bfloat16)")
    parser.add_argument("--keep-outputs", action="store_true", help="keep the reference latents (cross-card merge)")
    parser.add_argument("--judge-only", action="store_true",
                        help="keep the band file's measurement; judge the kernels that are not part of it again")
    args = parser.parse_args(argv)

    import fluxlab
    from fluxlab.compare import compare_images
    from fluxlab.compare import measure_image_band
    from fluxlab.compare.bands import DEFAULT_BAND_PROMPTS, LOW_PRECISION, ImageBand, _display

    register_planted()
    from fluxlab.util import parse_dtype

    pipe = fluxlab.load_flux2(args.model, dtype=parse_dtype(args.dtype))
    seeds = [int(s) for s in args.seeds.split(",")]
    judge_seeds = [int(s) for s in args.judge_seeds.split(",")]
    start = time.perf_counter()

    def progress(prompt, seed):
        print(f"[{time.perf_counter() - start:6.0f} s] {prompt!r} seed {seed}", flush=True)

    command = " ".join(["python", "benchmarks/image_bands.py", *sys.argv[1:]])
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / args.card / "image_bands.json"
    if args.judge_only:
        band = ImageBand.load(out)
        measured_in = json.loads(out.read_text()).get("seconds")
    else:
        band = measure_image_band(pipe, prompts=DEFAULT_BAND_PROMPTS, seeds=seeds, steps=args.steps,
                                  height=args.size, width=args.size, keep_outputs=args.keep_outputs, card=args.card,
                                  progress=progress, max_sequence_length=args.max_sequence_length)
        band.command = command
        band.source = _display(out)  # what ImageBand.load would name it
        band.save(out)  # the band first (and the reference latents beside it with --keep-outputs)
        measured_in = time.perf_counter() - start
    judged = {}
    for prompt in DEFAULT_BAND_PROMPTS[:1]:  # the judged kernels: one prompt (information only)
        result = compare_images(pipe, ["sdpa", *JUDGED], prompt=prompt, seeds=judge_seeds, steps=args.steps,
                                height=args.size, width=args.size, band=band,
                                max_sequence_length=args.max_sequence_length)
        judged[prompt] = {r.backend: {"what": JUDGED.get(r.backend, "the reference"), "verdict": r.verdict,
                                      "note": r.verdict_note, "final_latent_rel_l2_worst": r.final_latent_rel_l2_worst,
                                      "ssim_worst": r.ssim_worst, "psnr_worst": r.psnr_worst}
                          for r in result.rows}
        print(result.to_markdown())
    data = band.as_dict()
    data["judged"] = judged
    data["judge_seeds"] = judge_seeds
    data["judge_command"] = command  # the judged kernels' run (the same command unless --judge-only)
    data["seconds"] = measured_in  # measuring the band
    data["judge_seconds"] = time.perf_counter() - start - (0 if args.judge_only else measured_in)
    from fluxlab.decide.files import write_json

    from fluxlab.util import json_safe

    write_json(out, json_safe(data))  # PSNR inf (identical images) -> null
    print({k: {m: f"{v:.3g}" for m, v in b.items()} for k, b in band.bands.items()}, "headroom", band.headroom())
    print(f"wrote {out}: band {data['seconds']} s, judged {data['judge_seconds']:.0f} s; low-precision band from "
          f"{band.source_text(LOW_PRECISION)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
