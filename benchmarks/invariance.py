"""Determinism and invariance per backend, for the attention call and for a whole generation of the embedded model.

    .venv/bin/python benchmarks/invariance.py --device cpu --out benchmarks/results/cpu/invariance [--steps 1]
    python benchmarks/invariance.py --device cuda --out $OUT/invariance      # one H100/H200, about 2 minutes
    .venv/bin/python benchmarks/invariance.py --dry-run --out /tmp/inv       # the GPU run's code path, shrunk, here

Attention level (``fluxlab.compare.check_invariance``): every backend that runs here on the default ragged input,
reruns / sample 0 alone vs inside a batch of 4 / index 0 vs the last index, bitwise (CPU: bf16 and fp32; GPU: bf16
and fp16). Generation level (``fluxlab.compare.check_generation_invariance``): the embedded model (CPU: its own
float32; GPU: bf16, the kernels' dtype), 4 prompts with seeds 0..3, every backend that runs here: rerun, each
sample alone vs inside the batch (diffusers' list of prompts and list of generators), the kernel's own share of
that (the same batch with the kernel called once per sample), and the batch rotated by one. Writes
invariance.md/.json (attention) and generation.md/.json (generations) to --out, with card, versions, date and
command. ``--dry-run``: two backends, one dtype, 2 prompts, 1 step, on --device (default: here) -- the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fluxlab
from fluxlab.compare import check_generation_invariance, check_invariance
from fluxlab.compare.invariance import PROMPTS
from fluxlab.util import atomic_write, provenance

DTYPES = {"cpu": ("bf16", "fp32"), "cuda": ("bf16", "fp16")}
STEPS = 4
TEXT_TOKENS = 144  # the embedded model's captions are byte-level, up to 129 tokens (as the notebooks use)


def attention_level(device: str, dtypes, backends) -> tuple[str, list[dict]]:
    sections, runs = [], []
    for dtype in dtypes:
        report = check_invariance(backends, dtype=dtype, device=device)
        sections.append(f"## {report.meta['dtype']}, {report.meta['input']}, batch {report.meta['batch']}\n\n"
                        + report.to_markdown())
        runs.append({"meta": report.meta, "rows": [r.as_dict() for r in report.rows]})
    return "\n".join(sections), runs


def generation_level(device: str, backends, *, prompts, steps: int):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    pipe = fluxlab.load_flux2("embedded", device=device, dtype=dtype)
    try:
        return check_generation_invariance(pipe, backends, prompts=prompts, steps=steps,
                                           max_sequence_length=TEXT_TOKENS)
    finally:
        fluxlab.detach(pipe)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    parser.add_argument("--out", required=True, help="folder for invariance.md/.json and generation.md/.json")
    parser.add_argument("--backends", default=None, help="comma-separated (default: every backend that runs here)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"denoising steps per generation (default {STEPS})")
    parser.add_argument("--dry-run", action="store_true", help="two backends, one dtype, 2 prompts, 1 step")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = torch.device(device).type
    dtypes = DTYPES[kind]
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    prompts, steps = PROMPTS, args.steps
    if args.dry_run:
        backends = backends or ["sdpa", "sdpa_math"]
        dtypes, prompts, steps = dtypes[:1], PROMPTS[:2], 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/invariance.py " + " ".join(argv if argv is not None else sys.argv[1:])
    mark = "DRY RUN (shrunk settings; not a measurement)\n\n" if args.dry_run else ""
    start = time.perf_counter()

    text, runs = attention_level(device, dtypes, backends)
    head = {"provenance": provenance(), "command": command, "device": device, "dry_run": args.dry_run}
    atomic_write(out / "invariance.md", f"# Determinism and invariance: the attention call\n\n{mark}"
                 f"Command: `{command}`\n\n{text}")
    atomic_write(out / "invariance.json", json.dumps({**head, "runs": runs}, indent=1))
    print(text)

    report = generation_level(device, backends, prompts=prompts, steps=steps)
    atomic_write(out / "generation.md", f"# Determinism and invariance: whole generations of the embedded model\n\n"
                 f"{mark}Command: `{command}`\n\n{report.to_markdown()}")
    atomic_write(out / "generation.json", json.dumps({**head, **report.to_json_dict(command),
                                                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    print(report.to_markdown())
    print(f"wrote {out}/invariance.md, generation.md (+ .json) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
