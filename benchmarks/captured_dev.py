"""The gate on captured activations of the [dev]-size FLUX.2 transformer: which layers come closest to failing.

    source benchmarks/device/env.sh && python3 benchmarks/captured_dev.py --out $OUT/captured_dev     # H100/H200
    .venv/bin/python benchmarks/captured_dev.py --tiny --out /tmp/captured_dev                          # CPU dry run

The random-weight FLUX.2 [dev] transformer (diffusers' defaults: 8 + 48 blocks, 48 heads x 128, bf16) runs one
forward at ``--size``² with fluxlab attached; the q/k/v of the selected attention layers are captured
(``fluxlab.capture``) and every backend that runs here is judged on each of them against float64 by the same gate as
every other verdict (``fluxlab.compare_attention`` on the records). Random weights draw no picture, but their
activations have the model's real shapes (text + image tokens, RoPE, RMS-normed q/k). Writes captured_dev.json and
captured_dev.md (card, versions, date, command, git commit; the report's "closest to failing" list).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux2_step import build_transformer, environment  # noqa: E402

GPU_BACKENDS = ("fa4", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "flex", "fa3", "fa3_fp8", "sage", "sage2",
                "emu_fa3_fp8", "emu_sage2", "emu_aiter_quant")
DRY_RUN_BACKENDS = ("sdpa", "sdpa_math", "emu_sage", "emu_fa3_fp8")
# The first and last double-stream block, and single-stream blocks at the start, middle and end.
GPU_LAYERS = ("transformer_blocks.0", "transformer_blocks.7", "single_transformer_blocks.0",
              "single_transformer_blocks.24", "single_transformer_blocks.47")
DRY_RUN_LAYERS = ("transformer_blocks.0", "single_transformer_blocks.0")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="DRY RUN on CPU: the tiny [dev]-architecture config")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; --tiny 128)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: the GPU set, those that run)")
    args = parser.parse_args(argv)

    import fluxlab
    from fluxlab.decide.files import write_atomic, write_json
    from fluxlab.models.tiny import TINY_CONFIGS
    from fluxlab.parallel.model import run_transformer, transformer_inputs
    from fluxlab.util import git_commit

    device = torch.device("cpu" if args.tiny else "cuda")
    size = args.size or (128 if args.tiny else 1024)
    config = dict(TINY_CONFIGS["dev"]["transformer"]) if args.tiny else {}
    transformer = build_transformer(config, device, torch.bfloat16, seed=0)
    fluxlab.attach(transformer)
    inputs = transformer_inputs(transformer, height=size, width=size, device=device,
                                text_tokens=32 if args.tiny else 512)
    wanted = args.backends.split(",") if args.backends else list(DRY_RUN_BACKENDS if args.tiny else GPU_BACKENDS)
    present = {b.name: b for b in fluxlab.backends()}
    runnable = [b for b in wanted if b in present and present[b].available]
    skipped = {b: "not available here (fluxlab doctor says why)" if b in present else "not a backend"
               for b in wanted if b not in runnable}
    start = time.perf_counter()
    with fluxlab.capture(transformer, layers=list(DRY_RUN_LAYERS if args.tiny else GPU_LAYERS), to=device) as cap:
        run_transformer(transformer, inputs)
    fluxlab.detach(transformer)
    del transformer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report = fluxlab.compare_attention(cap.records, runnable, progress=False)
    wall_s = time.perf_counter() - start
    out = Path(args.out)
    payload = {"environment": environment(device), "git_commit": git_commit(), "command": " ".join(sys.argv),
               "dry_run": args.tiny, "size": size, "model": "tiny [dev]-architecture (DRY RUN)" if args.tiny else
               "FLUX.2 [dev] transformer, diffusers defaults, random bf16 weights (seed 0)",
               "layers": [r.layer for r in cap.records], "backends": runnable, "skipped": skipped,
               "verdicts": report.verdicts, "closest_to_failing": report.closest_to_failing_rows(per_backend=3),
               "wall_s": wall_s, "report": report.as_dict()}
    write_json(out / "captured_dev.json", payload)
    write_atomic(out / "captured_dev.md", report.to_markdown(details=False))
    print(report.to_markdown(details=False))
    print({"verdicts": report.verdicts, "skipped": skipped, "wall_s": round(wall_s, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
