"""The embedded model's images under each Hopper kernel (exact and quantised), judged by the image rule, on one GPU.

    source benchmarks/device/env.sh && python3 benchmarks/hopper_images.py --out $OUT/hopper_images     # H100/H200
    .venv/bin/python benchmarks/hopper_images.py --tiny --out /tmp/hopper_images                         # CPU dry run

fluxlab's embedded FLUX.2 model (bf16 on the GPU) draws the default caption once per kernel from the same noise
(``fluxlab.compare_images``, several seeds, the worst seed decides the verdict). Its head_dim is 32, below what the
Hopper kernels take, so each kernel that needs it runs on q/k/v zero-padded to head_dim 64 (zero columns change
neither Q·Kᵀ, nor the per-block scales of the quantised kernels, and the padded output columns are dropped) with the
original softmax scale. A kernel that cannot run here is a row with its reason. Writes hopper_images.json / .md /
.png (the images side by side) with card, versions, date, command and git commit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux2_step import environment  # noqa: E402

GPU_KERNELS = ("fa4", "sdpa_cudnn", "sdpa_flash", "fa3", "fa3_fp8", "sage", "sage2")
DRY_RUN_KERNELS = ("sdpa", "sdpa_math", "emu_fa3_fp8", "emu_sage2")
PAD_TO = 64  # the smallest head_dim every Hopper kernel here takes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="DRY RUN on CPU with exact kernels and emulators")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    parser.add_argument("--kernels", default=None, help="comma-separated (default: the Hopper set)")
    args = parser.parse_args(argv)

    import fluxlab
    from fluxlab.decide.files import write_atomic, write_figure, write_json
    from fluxlab.util import git_commit, json_safe

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    kernels = args.kernels.split(",") if args.kernels else list(DRY_RUN_KERNELS if args.tiny else GPU_KERNELS)
    head_dim = 32  # the embedded model's
    names, refused = [], {}
    for kernel in kernels:
        try:
            backend = fluxlab.registry.get_backend(kernel)
        except Exception as exc:  # noqa: BLE001 - an unknown name is a row with its reason
            refused[kernel] = str(exc)
            continue
        takes = backend.caps.head_dims
        needs_pad = device.type == "cuda" and kernel not in ("sdpa_cudnn", "sdpa_flash", "sdpa", "sdpa_math")
        pad = needs_pad or (takes and head_dim not in takes)
        names.append(fluxlab.registry.register_padded(kernel, PAD_TO) if pad else kernel)
    pipe = fluxlab.load_flux2("embedded", device=device, dtype=dtype, allowed=None)
    try:
        comparison = fluxlab.compare_images(pipe, names, seeds=args.seeds, steps=args.steps)
    finally:
        fluxlab.detach(pipe)
    out = Path(args.out)
    rows = [{"backend": r.backend, "verdict": r.verdict, "why": r.verdict_note, "psnr_worst": r.psnr_worst,
             "ssim_worst": r.ssim_worst, "final_latent_rel_l2": r.final_latent_rel_l2,
             "attention_calls": r.attention_calls, "error": r.error} for r in comparison.rows]
    payload = {"environment": environment(device), "git_commit": git_commit(), "command": " ".join(sys.argv),
               "dry_run": args.tiny, "steps": args.steps, "seeds": args.seeds, "dtype": str(dtype),
               "padded_to": PAD_TO, "refused": refused, "rows": rows}
    write_json(out / "hopper_images.json", json_safe(payload))
    write_atomic(out / "hopper_images.md", comparison.to_markdown())
    write_figure(out / "hopper_images.png", comparison.figure())
    print(comparison.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
