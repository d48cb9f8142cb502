"""``fluxlab generate``: one FLUX.2 image and manifest per attention backend, from the command line."""

from __future__ import annotations

import time
from pathlib import Path

# --offload's spellings -> load_flux2's offload=; "none" is load_flux2's default (None).
OFFLOAD_CHOICES = {"none": None, "model": "model", "sequential": "sequential", "auto": "auto"}


def add_subcommand(subparsers) -> None:
    from ..command import EXIT_TEXT, add_options, add_seed_arguments, deprecated_alias
    from .limits import BOUNDS

    parser = subparsers.add_parser(
        "generate",
        description="Generate the same FLUX.2 image once per attention backend. Writes OUT/<backend>/image.png and "
                    "OUT/<backend>/manifest.json (platform, versions, backend, seed, steps, size, timings). Ctrl-C "
                    "stops after the current step: the image is written as image.partial.png, its manifest says "
                    "\"interrupted\": true and how many steps completed; exit code 130.",
        epilog=f"Bounds (--force runs beyond them): image tokens <= {BOUNDS['image_tokens'].high} (2048x2048), sides "
               f"<= {BOUNDS['side'].high} px, steps <= {BOUNDS['steps'].high}, --max-sequence-length <= "
               f"{BOUNDS['max_sequence_length'].high}. " + EXIT_TEXT)
    add_options(parser, "--prompt")
    add_seed_arguments(parser, several=False)
    add_options(parser, "--steps")
    parser.add_argument("--size", default="64", help="N (square) or WIDTHxHEIGHT, multiples of 16 (8 for the "
                        "embedded model)")
    parser.add_argument("--backends", default="auto",
                        help="comma-separated backends, e.g. sdpa,reference; 'auto' = fluxlab's choice")
    deprecated_alias(parser, "--backend", "--backends", "backends")
    add_options(parser, "--out", "--overwrite", "--model", out="fluxlab-generate")
    deprecated_alias(parser, "--source", "--model", "model")
    add_options(parser, "--variant", variant={"help": "FLUX.2 variant (tiny: default dev; folders: read from "
                                                      "model_index.json)"})
    parser.add_argument("--max-sequence-length", type=int, default=512,
                        help="text tokens the prompt is padded to (the pipelines' default 512)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's own")
    add_options(parser, "--device", "--dtype", device={"help": "e.g. cuda; default: where the model loads (cpu)"},
                dtype={"help": "bf16, fp16 or fp32 (or bfloat16, float16, float32); default: float32 for tiny, "
                               "else as saved"})
    add_options(parser, "--offload")
    parser.add_argument("--force", action="store_true", help="run beyond fluxlab's size/steps/text-length bounds")
    add_options(parser, "--no-progress")
    parser.set_defaults(func=run)


# -- checks made before any model loads (shared with the other verbs) ---------------------------------------------


def check_model_source(source: str) -> None:
    """Refuse a --model that names nothing loadable, without loading it."""
    from ..errors import ModelSourceError
    from .load import _HUB_ID, EMBEDDED_DIR

    if source in ("tiny", "embedded"):
        if source == "embedded" and not (EMBEDDED_DIR / "model_index.json").is_file():
            raise ModelSourceError(f"the embedded FLUX.2 model is not in this install ({EMBEDDED_DIR}); use "
                                   "--model tiny or a local pipeline folder")
        return
    folder = Path(source).expanduser()
    if folder.exists():
        if not (folder / "model_index.json").is_file():
            raise ModelSourceError(f"--model {source}: no model_index.json there, so it is not a diffusers pipeline "
                                   "folder; pass the folder pipe.save_pretrained(...) wrote, 'tiny' or 'embedded'")
        return
    if not _HUB_ID.fullmatch(source) or source.startswith((".", "~")):
        raise ModelSourceError(f"--model {source}: no such folder; pass 'tiny', 'embedded', a local pipeline folder "
                               "or a Hugging Face Hub id such as black-forest-labs/FLUX.2-dev")


def check_device(device: str | None) -> None:
    """Refuse a --device torch cannot parse, or a GPU this machine does not have."""
    if device is None:
        return
    import torch

    from ..command import UsageError

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if parsed.type not in ("cpu", "cuda"):  # meta holds no numbers; mps, xpu, ...: no fluxlab backend runs there
        raise UsageError(f"--device {device}: fluxlab runs on cpu or cuda (ROCm GPUs are cuda too); "
                         f"{parsed.type!r} is not one of them")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA/ROCm device on this machine (fluxlab doctor shows what is "
                         "here); use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0; "
                         "use e.g. --device cuda:0")


def check_offload_option(offload: str, device: str | None) -> str | None:
    """``--offload`` as ``load_flux2``'s ``offload=``; refused here when this machine cannot do it (no GPU)."""
    from ..command import UsageError
    from .offload import OffloadError, resolve_device

    try:
        resolve_device(OFFLOAD_CHOICES[offload], device)
    except OffloadError:
        where = f"--device {device} is the CPU" if device is not None else "this machine has no CUDA/ROCm GPU"
        raise UsageError(f"--offload {offload} keeps the weights in host memory and moves them to a GPU when they run, "
                         f"but {where}; use --offload none (or auto, which means none without a GPU)") from None
    return OFFLOAD_CHOICES[offload]


def check_model_options(args) -> str | None:
    """--model, --device and --offload checked without loading anything; returns load_flux2's ``offload=``."""
    check_model_source(args.model)
    check_device(args.device)
    return check_offload_option(args.offload, args.device)


def check_backends(text: str, device) -> list[str]:
    """Parsed --backends inside FLUX.2's set that can run on ``device``'s platform; else a usage error."""
    from ..command import check_distinct, split_list
    from ..errors import BackendNotAllowedError
    from .generate import parse_backends, unavailable_reasons
    from .attach import flux2_backends

    backends = parse_backends(text)
    check_distinct("--backends", split_list(text), backends)
    outside = [b for b in backends if b != "auto" and b.split(":")[0] not in flux2_backends()]
    if outside:
        raise BackendNotAllowedError(f"{outside} are outside FLUX.2's backend set "
                                     f"({', '.join(sorted(flux2_backends()))})")
    unavailable = unavailable_reasons(backends, device)
    if unavailable:
        why = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in unavailable.items())
        raise BackendNotAllowedError(f"these backends cannot run here (fluxlab doctor explains): {why}")
    return backends


def run(args) -> int:
    from ..command import failed
    from ..errors import FluxlabError
    from ..outputs import check_output_folder, output_folder
    from ..util import parse_dtype
    from .generate import generate, parse_size
    from .limits import check_generation, size_multiple_for
    from .load import load_flux2

    # Every mistake is found here, before the model loads: main() prints it in one line with exit code 2.
    offload = check_model_options(args)
    multiple = size_multiple_for(args.model)
    width, height = parse_size(args.size, multiple)
    check_generation(width=width, height=height, steps=args.steps, seed=args.seed, multiple=multiple,
                     max_sequence_length=args.max_sequence_length, force=args.force,
                     guidance_scale=args.guidance_scale, prompt=args.prompt)
    backends = check_backends(args.backends, args.device)
    check_output_folder(args.out, overwrite=args.overwrite)
    with output_folder(args.out, verb="generate", overwrite=args.overwrite) as out:
        start = time.perf_counter()
        pipe = load_flux2(args.model, flux2_variant=args.variant, device=args.device, offload=offload,
                          dtype=parse_dtype(args.dtype) if args.dtype else None, height=height, width=width)
        load_s = time.perf_counter() - start
        print(f"{type(pipe).__name__} from {args.model!r}, loaded in {load_s:.1f} s; {width}x{height}, "
              f"{args.steps} steps, seed {args.seed}", flush=True)
        try:
            results = generate(pipe, backends, prompt=args.prompt, seed=args.seed, steps=args.steps, width=width,
                               height=height, out_dir=out, guidance_scale=args.guidance_scale,
                               progress=not args.no_progress, max_sequence_length=args.max_sequence_length,
                               force=args.force,
                               model_info={"source": args.model, "variant": args.variant, "load_s": round(load_s, 3)})
        except FluxlabError as exc:
            return failed("generate", exc)
    for result in results:
        ran = ", ".join(f"{b} x{n}" for b, n in result.manifest["attention_calls"].items())
        print(f"  {result.backend:<16} {result.manifest['timings']['generate_s']:7.3f} s   attention: {ran}")
    print(f"wrote {args.out}/<backend>/image.png and manifest.json")
    return 0
