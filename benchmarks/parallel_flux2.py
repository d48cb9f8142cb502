"""FLUX.2 [dev]-size transformer (random weights) on 2 GPUs with Ulysses and ring vs 1 GPU: time per step and
the equivalence verdict, per fluxlab backend. Writes one JSON file.

Every rank builds the 32 B-parameter transformer on the meta device in bf16, materialises it on its GPU with
``to_empty`` and initialises it there (same seed: identical weights, checked); runs the 1-GPU baseline on its own
GPU, then each (mode, backend) through diffusers' context parallelism with fluxlab's kernel inside
(``fluxlab.parallel.compare.run_cases``). The verdict: rel-L2 of the 2-GPU output vs the 1-GPU output of the same
backend <= 2 x that backend's own error vs float64 attention (measured here with fluxlab's ``reference``).

On the 2-GPU machine (nvidia-h100-x2 / nvidia-h200-x2), NVLink multicast OFF (the script forces these too):

    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    torchrun --standalone --nproc_per_node 2 benchmarks/parallel_flux2.py --out $OUT/parallel_flux2.json

Needs diffusers 0.42.x (+ importlib_metadata) and, for ``fa4``, flash-attn-4 and its CuTe DSL wheels on the
PYTHONPATH (``benchmarks/device/env.sh`` sets all of that up, multicast variables included). A backend that cannot
run is refused before launch and listed under "refused" with its reasons; the others still run.

Dry run on a CPU machine (gloo, fluxlab's tiny transformer, CPU backends):

    torchrun --standalone --nproc_per_node 2 benchmarks/parallel_flux2.py --tiny --out /tmp/parallel_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# NVLink multicast stays off on the lent machines (a program using it can take the host's GPUs out of service):
# set before torch initialises NCCL, whatever the caller's environment says.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(MULTICAST_OFF)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GPU_BACKENDS = "sdpa_cudnn,fa4"
CPU_BACKENDS = "sdpa_flash,reference"  # LSE-returning kernels that run on CPU (for --tiny)
MODES = ("ulysses=2", "ring=2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="fluxlab's tiny transformer on CPU/gloo (a dry run)")
    parser.add_argument("--backends", help=f"comma-separated (default {GPU_BACKENDS}; with --tiny {CPU_BACKENDS})")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes (default ulysses=2,ring=2)")
    parser.add_argument("--height", type=int, help="default 2048 (128 with --tiny)")
    parser.add_argument("--width", type=int, help="default 2048 (128 with --tiny)")
    parser.add_argument("--text-tokens", type=int, help="default 512 (32 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (FA4 compiles on its first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="parallel_flux2.json", help="JSON file (written by rank 0)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist

    from fluxlab.parallel import init_distributed
    from fluxlab.parallel.checks import ParallelSpec
    from fluxlab.parallel.compare import plan, plan_reasons, run_cases
    from fluxlab.util import atomic_write, git_commit

    rank, world_size, device = init_distributed(backend="gloo" if args.tiny else None)
    if not args.tiny and device.type != "cuda":
        raise SystemExit("no CUDA GPU: run on the 2-GPU machine, or pass --tiny for the CPU dry run")
    size = "tiny" if args.tiny else "dev"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    height = args.height or (128 if args.tiny else 2048)
    width = args.width or (128 if args.tiny else 2048)
    text_tokens = args.text_tokens or (32 if args.tiny else 512)
    backends = [b.strip() for b in (args.backends or (CPU_BACKENDS if args.tiny else GPU_BACKENDS)).split(",")]
    modes = [m.strip() for m in args.modes.split(",")]

    cases, refused = [], []
    for mode in modes:
        for backend in backends:
            reasons = plan_reasons([(ParallelSpec.parse(mode), backend)], size=size, height=height, width=width,
                                   text_tokens=text_tokens, dtype=dtype, world_size=world_size)
            if reasons:
                refused.append({"parallel": mode, "backend": backend, "reasons": reasons})
            else:
                cases.append((mode, backend))
    if rank == 0:
        for item in refused:
            print(f"refused {item['parallel']} / {item['backend']}:\n  - " + "\n  - ".join(item["reasons"]),
                  flush=True)
    result = {"rows": [], "meta": {}}
    started = time.perf_counter()
    if cases:
        payload = plan(cases=cases, size=size, height=height, width=width, text_tokens=text_tokens, dtype=dtype,
                       seed=args.seed, repeats=args.repeats, warmup=args.warmup)
        result = run_cases(payload)
    if rank == 0:
        from fluxlab.parallel.compare import ParallelComparison

        report = {
            "command": "torchrun --standalone --nproc_per_node 2 benchmarks/parallel_flux2.py "
                       + " ".join(sys.argv[1:]),
            "environment": {k: os.environ.get(k) for k in (*MULTICAST_OFF, "CUDA_VISIBLE_DEVICES")},
            "git_commit": git_commit(),  # a real commit hash, or None (never the word "HEAD")
            "wall_s": round(time.perf_counter() - started, 1),
            "refused": refused,
            **result,
            "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
                                if device.type == "cuda" else None),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(args.out), json.dumps(report, indent=2) + "\n")
        if result["rows"]:
            print(ParallelComparison.from_dict(result).table(), flush=True)
        print(f"wrote {args.out}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    ok = all(row["verdict"] == "pass" for row in result["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
