"""fluxlab's per-call tax at a tiny, launch-bound shape: sdpa, SDPA's forced kernels and fa4, each against its raw
library call (imports done once on both sides). Writes ``dispatch_overhead.json`` (README's "Dispatch tax").

    python benchmarks/dispatch_overhead.py                # -> benchmarks/results/<card>/dispatch_overhead.json
    python benchmarks/dispatch_overhead.py --out "$OUT"   # on the device machine
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import fluxlab  # noqa: E402
from fluxlab import bench  # noqa: E402
from fluxlab.util import atomic_write, provenance  # noqa: E402

BACKENDS = ("sdpa", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "fa4")
SHAPE = (1, 64, 2, 64)  # (batch, seq, heads, head_dim): the kernel is launch-bound, so the tax shows
TARGET_US = {"fa4": 5.0}  # issue 12: fa4's tax at this shape <= 5 us


def card_name(device_name: str) -> str:
    """"NVIDIA H200" -> "h200", "NVIDIA H100 80GB HBM3" -> "h100"; otherwise a slug of the name."""
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name)
    return (match.group(1) if match else re.sub(r"[^A-Za-z0-9]+", "_", device_name)).lower()


def measure(calls: int) -> dict:
    platform = fluxlab.current_platform()
    raws = bench.raw_calls()  # FA4's function imported once there, as a plan binds it
    rows = []
    for name in BACKENDS:
        reasons = fluxlab.registry.get_backend(name).platform_reasons(platform)
        if reasons:
            rows.append({"backend": name, "status": "refused", "reasons": reasons})
            continue
        try:
            row = bench.dispatch_overhead_us(name, raws[name], shape=SHAPE, calls=calls)
        except Exception as exc:  # a kernel that fails is a result, recorded with its error
            rows.append({"backend": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        if name in TARGET_US:
            row["target_us"] = TARGET_US[name]
        rows.append(row | {"status": "ran"})
    return {"machine": bench.machine_info(), "provenance": provenance(), "shape": list(SHAPE), "dtype": "bfloat16",
            "calls_per_round": calls, "overhead": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for dispatch_overhead.json (default benchmarks/results/<card>)")
    parser.add_argument("--calls", type=int, default=2000, help="back-to-back calls per timed round (default 2000)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("dispatch_overhead.py measures GPU launch overhead; run it on a CUDA or ROCm machine.", file=sys.stderr)
        return 2
    results = measure(args.calls)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / card_name(
        results["machine"]["platform"]["device_name"])
    path = atomic_write(out / "dispatch_overhead.json", json.dumps(results, indent=1) + "\n")
    for row in results["overhead"]:
        if row["status"] == "ran":
            print(f"{row['backend']:15s} raw {row['raw_us']:6.1f} us  fluxlab {row['fluxlab_us']:6.1f} us  "
                  f"added {row['added_us']:+5.1f} us")
        else:
            print(f"{row['backend']:15s} {row['status']}: {row.get('error') or '; '.join(row['reasons'])}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
