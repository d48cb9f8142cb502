"""``fluxlab generate``: one FLUX.2 image and manifest per attention backend, from the command line."""

from __future__ import annotations

import sys
import time

DTYPES = ("float32", "bfloat16", "float16")


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate the same FLUX.2 image with each attention backend (PNG + manifest.json each)",
        description="Generate the same FLUX.2 image once per attention backend. Writes OUT/<backend>/image.png and "
                    "OUT/<backend>/manifest.json (platform, versions, backend, seed, steps, size, timings).")
    parser.add_argument("--prompt", default="a red circle on a blue background")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="64", help="N (square) or WIDTHxHEIGHT, multiples of 16 (default 64)")
    parser.add_argument("--backend", default="auto",
                        help="comma-separated backends, e.g. sdpa,reference; 'auto' = fluxlab's choice")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--variant", choices=("dev", "klein"), default=None,
                        help="FLUX.2 variant (tiny: default dev; folders: read from model_index.json)")
    parser.add_argument("--source", default="tiny", help="'tiny', a local pipeline folder, or a Hub id")
    parser.add_argument("--max-sequence-length", type=int, default=512,
                        help="text tokens the prompt is padded to (the pipelines' default 512)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's own")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads (cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: float32 for tiny, else as saved")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import FluxlabError

    try:
        return _run(args)
    except (FluxlabError, ValueError, NotImplementedError, FileNotFoundError) as exc:
        print(f"fluxlab generate: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from .generate import parse_backends, parse_size, unavailable_reasons
    from .supported import FLUX2_BACKENDS

    # Everything that can be checked without the model is checked before it loads.
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    width, height = parse_size(args.size)
    backends = parse_backends(args.backend)
    outside = [b for b in backends if b != "auto" and b.split(":")[0] not in FLUX2_BACKENDS]
    if outside:
        from ..errors import BackendNotAllowedError

        raise BackendNotAllowedError(f"{outside} are outside FLUX.2's backend set "
                                     f"({', '.join(sorted(FLUX2_BACKENDS))})")
    unavailable = unavailable_reasons(backends, args.device)
    if unavailable:
        lines = "\n".join(f"  {name}: {'; '.join(reasons)}" for name, reasons in unavailable.items())
        raise ValueError(f"these backends cannot run here (fluxlab doctor explains):\n{lines}")

    import torch

    from .generate import generate
    from .load import load_flux2

    start = time.perf_counter()
    pipe = load_flux2(args.source, variant=args.variant, device=args.device,
                      dtype=getattr(torch, args.dtype) if args.dtype else None)
    load_s = time.perf_counter() - start
    results = generate(pipe, backends, prompt=args.prompt, seed=args.seed, steps=args.steps, width=width,
                       height=height, out_dir=args.out, guidance_scale=args.guidance_scale,
                       progress=not args.no_progress, max_sequence_length=args.max_sequence_length,
                       model_info={"source": args.source, "variant": args.variant, "load_s": round(load_s, 3)})
    print(f"{type(pipe).__name__} from {args.source!r}, loaded in {load_s:.1f} s; {width}x{height}, "
          f"{args.steps} steps, seed {args.seed}")
    for result in results:
        ran = ", ".join(f"{b} x{n}" for b, n in result.manifest["attention_calls"].items())
        print(f"  {result.backend:<16} {result.manifest['timings']['generate_s']:7.3f} s   attention: {ran}")
    print(f"wrote {args.out}/<backend>/image.png and manifest.json")
    return 0
