"""The measurements behind the image verdicts (``fluxlab.compare.IMAGE_RULE_TEXT``), on the embedded model (CPU).

    python benchmarks/image_rule.py --out benchmarks/results/cpu/image_rule.json

Exact kernels (sdpa, sdpa_math, sdpa_flash, flex) against float64; planted kernels (softmax scale 1 % and 10 % too
large, attention inputs and output rounded to bf16) and the emulated bf16 kernel ``emu_bf16``: final-latent
rel-L2, SSIM, PSNR and the verdict per backend, worst over seeds, at 4 and 8 steps. tests/test_image_rule_numbers.py
checks the rule's text against this file.
"""

from __future__ import annotations

import argparse
import math
import sys

PLANTED = {
    "scale_1pct": "softmax scale 1 % too large",
    "scale_10pct": "softmax scale 10 % too large",
    "bf16_io": "q, k, v and the output rounded to bf16",
}
EXACT = ("sdpa", "sdpa_math", "sdpa_flash", "flex")


def register_planted():
    import fluxlab

    def scaled(factor):
        def kernel(q, k, v, *, scale, causal=False, return_lse=False, **options):
            return fluxlab.attention(q, k, v, backend="sdpa", scale=scale * factor, causal=causal)
        return kernel

    def bf16_io(q, k, v, *, scale, causal=False, return_lse=False, **options):
        r = lambda t: t.bfloat16().to(q.dtype)  # noqa: E731
        return r(fluxlab.attention(r(q), r(k), r(v), backend="sdpa", scale=scale, causal=causal))

    for name, fn in (("scale_1pct", scaled(1.01)), ("scale_10pct", scaled(1.1)), ("bf16_io", bf16_io)):
        fluxlab.register_backend(name, fn, replace=True, description=PLANTED[name])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", default="4,8")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)

    import fluxlab
    from fluxlab.compare import compare_images
    from fluxlab.decide.files import write_json
    from fluxlab.util import provenance

    register_planted()
    backends = ["reference", *EXACT, *PLANTED, "emu_bf16"]
    pipe = fluxlab.load_flux2("embedded", allowed=set(backends))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"provenance": provenance(), "command": " ".join(["python", *sys.argv]), "model": "embedded (CPU, fp32)",
               "prompt": "a red circle at the top left on a blue background", "seeds": seeds,
               "max_sequence_length": 64, "planted": PLANTED, "runs": []}
    for steps in (int(s) for s in args.steps.split(",")):
        result = compare_images(pipe, backends, prompt=results["prompt"], steps=steps, seeds=seeds,
                                reference="reference", max_sequence_length=64)
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        results["runs"].append({
            "steps": steps, "spread": result.spread,
            "rows": {r.backend: {"final_latent_rel_l2_worst": clean(r.final_latent_rel_l2_worst),
                                 "final_latent_rel_l2_mean": clean(r.final_latent_rel_l2),
                                 "ssim_worst": clean(r.ssim_worst), "psnr_worst": clean(r.psnr_worst),
                                 "verdict": r.verdict, "note": r.verdict_note} for r in result.rows}})
        print(result.to_markdown())
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
