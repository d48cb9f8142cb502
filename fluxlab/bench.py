"""``fluxlab bench``: TFLOP/s and error vs float64 of every available backend at FLUX.2 shapes (GPU), with the
card's measured bf16 GEMM rate as the ceiling and each backend's raw library call beside it (the dispatcher's tax).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
from pathlib import Path

import torch

from .results import markdown_table
from .util import atomic_path, atomic_write, parse_dtype, provenance, rel_l2, time_calls

FLUX_SHAPES = [  # (batch, seq, heads, head_dim): FLUX.2 [dev] at 1024^2 (S 4608) and 2048^2 (S 16896)
    (b, s, h, 128) for b, s, h in itertools.product((1, 2), (4608, 16896), (24, 48))
]


def attention_flops(batch, seq, heads, head_dim) -> float:
    return 4.0 * batch * heads * seq * seq * head_dim  # QK^T and PV, non-causal


def time_ms(fn, *, warmup=25, rep=200) -> float:
    """Median milliseconds of ``fn()`` on the GPU."""
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    except ImportError:
        return time_calls(fn, warmup=10, repeats=50, device="cuda").median_ms


def paired_ms(fn_a, fn_b, rounds=5) -> tuple[float, float]:
    """Median of interleaved measurements of two callables: clock and thermal drift hit both alike."""
    a, b = [], []
    for _ in range(rounds):
        a.append(time_ms(fn_a, rep=60))
        b.append(time_ms(fn_b, rep=60))
    return statistics.median(a), statistics.median(b)


def gemm_tflops(dtype=torch.bfloat16, n=8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    return 2 * n**3 / (time_ms(lambda: a @ b) * 1e-3) / 1e12


def raw_calls() -> dict:
    """Each backend's library call with no fluxlab in between (same layout work the adapter must do)."""
    import contextlib

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa(kernel=None):  # None: torch's own pick
        def call(q, k, v, scale):
            with sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext():
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      scale=scale).transpose(1, 2)
        return call

    calls = {"sdpa": sdpa(), "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
             "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION), "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION)}
    try:  # imported once, as a fluxlab plan binds it: neither side pays an import per call
        from flash_attn.cute import flash_attn_func
    except ImportError:
        return calls
    calls["fa4"] = lambda q, k, v, scale: flash_attn_func(q, k, v, softmax_scale=scale)
    return calls


def machine_info() -> dict:
    from .doctor import backends

    made = provenance()
    info = {"platform": made["platform"], "python": made["versions"]["python"], "torch": made["versions"]["torch"],
            "date": made["date"], "versions": made["versions"], "git": made["git"]}
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    info["backend_versions"] = {s.name: s.version for s in backends() if s.available}
    return info


def dispatch_overhead_us(backend: str, raw, *, shape=(1, 64, 2, 64), calls=2000, rounds=7) -> dict:
    """Wall-clock microseconds per call at a tiny shape, where the kernel is launch-bound.

    Rounds of ``calls`` back-to-back calls alternate raw / fluxlab (after one untimed round of each), and each side
    keeps its best round: measured one after the other, whichever side ran first would pay for clocks and caches
    settling.
    """
    from .dispatch import attention

    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = shape[-1] ** -0.5

    def round_of(fn):
        def calls_in_a_row():
            for _ in range(calls):
                fn()
        return calls_in_a_row

    sides = {"raw": round_of(lambda: raw(q, k, v, scale)),
             "fluxlab": round_of(lambda: attention(q, k, v, backend=backend, scale=scale))}
    for fn in sides.values():  # one untimed round each: JIT compiles, plan caches, allocator
        fn()
    best = {name: math.inf for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            best[name] = min(best[name], time_calls(fn, warmup=0, repeats=1, device="cuda").min_ms)
    raw_us, ours_us = (best[name] * 1e3 / calls for name in ("raw", "fluxlab"))
    return {"backend": backend, "shape": list(shape), "raw_us": raw_us, "fluxlab_us": ours_us,
            "added_us": ours_us - raw_us, "method": f"best of {rounds} alternating rounds of {calls} calls"}


def run(backends=None, shapes=None, dtypes=("bf16", "fp16"), *, progress=True) -> dict:
    from . import doctor
    from .backends.reference import reference_attention
    from .dispatch import attention, default_backend
    from .platform import current_platform
    from .registry import get_backend
    from .terminal import progress_bar  # a bar on a terminal, log lines in pipes

    available = [s.name for s in doctor.backends() if s.available and s.name not in ("reference", "fa")]
    names = list(backends or available)
    raws = raw_calls()
    results = {"machine": machine_info(), "gemm_bf16_tflops": gemm_tflops(), "rows": [], "overhead": []}
    configs = list(itertools.product(shapes or FLUX_SHAPES, dtypes))
    for shape, dtype_name in progress_bar(configs, desc="bench", disable=not progress):
        dtype = parse_dtype(dtype_name)
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
        scale = shape[-1] ** -0.5
        want_error = shape[0] == 1 and dtype_name == "bf16"
        exact = reference_attention(q, k, v, scale=scale) if want_error else None
        flops = attention_flops(*shape)
        for name in names:
            row = {"backend": name, "shape": list(shape), "dtype": dtype_name}
            reasons = get_backend(name).not_supported_reasons(q, k, v, current_platform())
            if reasons:
                results["rows"].append(row | {"status": "refused", "reasons": reasons})
                continue
            try:
                out = attention(q, k, v, backend=name, scale=scale)  # also compiles / warms up
                ours = lambda: attention(q, k, v, backend=name, scale=scale)  # noqa: E731
                if name in raws:
                    raw = lambda: raws[name](q, k, v, scale)  # noqa: E731
                    ms, raw_ms = paired_ms(ours, raw)
                    row |= {"raw_ms": raw_ms, "raw_tflops": flops / (raw_ms * 1e-3) / 1e12}
                else:
                    ms = time_ms(ours)
                row |= {"status": "ran", "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
                if exact is not None:
                    row["rel_l2_vs_fp64"] = rel_l2(out, exact)
            except Exception as exc:  # a kernel that fails is a result, not a crash of the sweep
                row |= {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
            results["rows"].append(row)
        del q, k, v, exact
        torch.cuda.empty_cache()
    for name, raw in raws.items():
        if name in names:
            try:
                results["overhead"].append(dispatch_overhead_us(name, raw))
            except Exception as exc:
                results["overhead"].append({"backend": name, "error": str(exc)[:300]})
    results["default_pick"] = default_backend()
    return results


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("status") == "ran" and r["dtype"] == "bf16" and r["shape"][0] == 1]
    shapes = sorted({tuple(r["shape"]) for r in rows})
    names = sorted({r["backend"] for r in rows})
    fig, ax = plt.subplots(figsize=(4 + 1.6 * len(shapes), 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [next((r["tflops"] for r in rows if r["backend"] == name and tuple(r["shape"]) == s), 0)
                  for s in shapes]
        ax.bar([j + i * width for j in range(len(shapes))], values, width, label=name)
    ax.axhline(results["gemm_bf16_tflops"], color="k", linestyle="--", label="bf16 GEMM (measured)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels([f"S={s[1]}\nH={s[2]}" for s in shapes])
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"attention forward, bf16, D=128, batch 1 — {results['machine']['platform']['device_name']}")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=120, format="png")
    plt.close(fig)


def summary(results: dict) -> str:
    """The rows that ran, and per shape/dtype the default pick against the fastest and the GEMM ceiling."""
    ran = [r for r in results["rows"] if r.get("status") == "ran"]
    pick, gemm = results["default_pick"], results["gemm_bf16_tflops"]
    table = [{"backend": r["backend"], "shape (B,S,H,D)": str(tuple(r["shape"])), "dtype": r["dtype"],
              "TFLOP/s": r["tflops"], "raw TFLOP/s": r.get("raw_tflops"), "rel-L2 vs fp64": r.get("rel_l2_vs_fp64")}
             for r in ran]
    speed = []
    for shape, dtype in sorted({(tuple(r["shape"]), r["dtype"]) for r in ran}):
        group = [r for r in ran if (tuple(r["shape"]), r["dtype"]) == (shape, dtype)]
        fastest = max(group, key=lambda r: r["tflops"])
        chosen = next((r for r in group if r["backend"] == pick), None)
        if chosen is not None:
            speed.append({"shape": str(shape), "dtype": dtype, "default": f"{pick} {chosen['tflops']:.0f}",
                          "fastest": f"{fastest['backend']} {fastest['tflops']:.0f}",
                          "default/fastest": chosen["tflops"] / fastest["tflops"],
                          "default/GEMM": chosen["tflops"] / gemm,
                          "fluxlab/raw": chosen["tflops"] / chosen["raw_tflops"] if "raw_tflops" in chosen else None})
    taxes = [f"dispatch tax {o['backend']}: raw {o['raw_us']:.1f} us, fluxlab {o['fluxlab_us']:.1f} us "
             f"(+{o['added_us']:.1f} us) at {tuple(o['shape'])}" for o in results["overhead"] if "added_us" in o]
    return "\n".join([f"card: {results['machine']['platform']['device_name']}; bf16 GEMM {gemm:.0f} TFLOP/s; default "
                      f"pick: {pick}", markdown_table(table), markdown_table(speed).rstrip(), *taxes])


def main(args) -> int:
    from .command import NoDeviceError, UsageError, check_distinct, split_list
    from .dispatch import BackendChoice

    dtypes, backends = split_list(args.dtypes), split_list(args.backends)
    if not dtypes:
        raise UsageError("--dtypes is empty; e.g. --dtypes bf16,fp16")
    check_distinct("--dtypes", dtypes, [str(parse_dtype(d)) for d in dtypes])  # unknown names raise here
    check_distinct("--backends", backends, [str(BackendChoice.parse(b)) for b in backends])
    if not torch.cuda.is_available():  # main() prints it on stderr with its exit code (3)
        raise NoDeviceError("needs a CUDA or ROCm GPU (it times kernels on one) and this machine has none; run it on "
                            "a GPU machine, or `fluxlab compare` for the numerics on a CPU")
    shapes = [(1, 4608, 24, 128), (1, 16896, 48, 128)] if args.quick else None
    results = run(backends or None, shapes, tuple(dtypes), progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "attention.json", json.dumps(results, indent=1))
    # The tiny-shape tax on its own (benchmarks/dispatch_overhead.py writes the same file without the sweep).
    atomic_write(out / "dispatch_overhead.json",
                 json.dumps({"machine": results["machine"], "overhead": results["overhead"]}, indent=1))
    plot(results, out / "attention.png")
    text = summary(results)
    atomic_write(out / "attention.md", text + "\n")
    print(text)
    return 0


def add_subcommand(subparsers) -> None:
    from .command import add_options

    parser = subparsers.add_parser("bench", description="Time every available attention backend at FLUX.2 shapes "
                                   "on this machine's GPU; without one it exits with code 3.")
    parser.add_argument("--backends", help="comma-separated names (default: every available backend)")
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma-separated dtypes (bf16, fp16, fp32)")
    parser.add_argument("--quick", action="store_true", help="two shapes instead of the full FLUX set")
    add_options(parser, "--out", "--no-progress",
                out={"default": "benchmarks/results", "help": "folder for attention.json/.png/.md"})
    parser.set_defaults(func=main)
