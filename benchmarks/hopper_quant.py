"""Quantised attention on Hopper against FA4, in one run on one card: speed, error, emulator distances.

    python benchmarks/hopper_quant.py --out "$OUT"                 # H100/H200: FLUX shapes, three input sets
    python benchmarks/hopper_quant.py --out DIR --tiny --device cpu  # a dry run of the script (no real kernels)

Kernels (fluxlab backends, each called through its adapter with explicit scale, [B, S, H, D] bf16):
fa4, sdpa_cudnn, fa3 (bf16), fa3_fp8 (the adapter: its per (batch, head) quantisation included), fa3_fp8 kernel only
(inputs quantised once beforehand: the kernel's own speed), sage2 (its sm90 kernel, per_thread and per_warp). A
kernel that cannot run here is reported with its reason, never silently dropped.

1. Speed: TFLOP/s = 4 * S^2 * H * D / median time (CUDA events, ``--reps`` calls after ``--warmup``), at S 4608 and
   16896 (FLUX.2 at 1024^2 and 2048^2), H 24, D 128; the kernels run in turn, twice over (two rounds), so the two
   medians of a kernel show the run-to-run spread beside the differences between kernels.
2. Error: rel-L2 of each kernel against float64 (S 4608, H 24; the ``DISTRIBUTIONS`` of fluxlab.compare.inputs), the
   LSE's largest absolute difference from float64's, and the emulators' distances to their kernels: the target is
   rel-L2(emulator, kernel) <= 0.25 x rel-L2(kernel, float64) (the Sage 1 emulator's target).
Writes ``hopper_quant.json`` and ``hopper_quant.md`` (card, versions, date, command, git commit).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import fluxlab
from fluxlab.backends.flash_attn import bind_fa3_fp8, fa3_module, fp8_operands
from fluxlab.backends.reference import reference_attention
from fluxlab.compare.inputs import DISTRIBUTIONS, synthetic_qkv
from fluxlab.util import distribution_version, provenance, rel_l2, time_calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulators import write_results  # noqa: E402

FLUX_SEQS = (4608, 16896)
HEADS, HEAD_DIM = 24, 128
TINY = {"seqs": (256, 320), "heads": 2, "head_dim": 64}
TARGET = 0.25
# name -> (fluxlab backend, options); fa3_fp8_kernel is timed on inputs quantised beforehand
KERNELS = {"fa4": ("fa4", {}), "sdpa_cudnn": ("sdpa_cudnn", {}), "fa3": ("fa3", {}), "fa3_fp8": ("fa3_fp8", {}),
           "fa3_fp8_kernel": ("fa3_fp8", {}), "sage2": ("sage2", {}),
           "sage2:per_warp": ("sage2", {"qk_quant_gran": "per_warp"})}
# emulator -> (its options, the kernel it models)
EMULATORS = {"emu_fa3_fp8": ({}, "fa3_fp8"), "emu_sage2": ({}, "sage2"),
             "emu_sage2:per_warp": ({"qk_quant_gran": "per_warp"}, "sage2:per_warp")}


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def make_kernel(name: str, device: torch.device):
    """A callable ``fn(q, k, v, scale, return_lse=False)`` for a KERNELS entry, or a string: why it cannot run."""
    backend_name, options = KERNELS[name]
    backend = fluxlab.registry.get_backend(backend_name)
    probe = torch.empty(1, 128, 1, HEAD_DIM, dtype=torch.bfloat16, device="meta")
    reasons = backend.platform_reasons(fluxlab.current_platform()) if device.type == "cuda" else \
        [f"{backend_name} needs an NVIDIA GPU (this run is on {device.type})"]
    if not reasons:
        reasons = [r for r in backend.input_reasons(probe, probe, fluxlab.current_platform(), causal=False,
                                                    return_lse=False) if "inputs are on meta" not in r]
    if reasons:
        return "; ".join(reasons)
    try:
        kernel = bind_fa3_fp8() if name == "fa3_fp8_kernel" else backend.kernel()
    except Exception as exc:  # noqa: BLE001 - an install that fails to import is reported
        return _reason(exc)
    if name == "fa3_fp8_kernel":
        flash_attn_func = fa3_module().flash_attn_func
        cache = {}

        def prequantised(q, k, v, scale, return_lse=False):
            key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
            if key not in cache:
                cache.clear()
                cache[key] = fp8_operands(q, k, v)
            q8, k8, v8, dq, dk, dv = cache[key]
            return flash_attn_func(q8, k8, v8, softmax_scale=scale, q_descale=dq, k_descale=dk, v_descale=dv)
        return prequantised

    def call(q, k, v, scale, return_lse=False):
        return kernel(q, k, v, scale=scale, causal=False, return_lse=return_lse, **options)
    return call


def _median_ms(fn, *, warmup: int, reps: int, device: torch.device) -> float:
    if device.type != "cuda":
        return time_calls(fn, warmup=warmup, repeats=reps, device=device).median_ms
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def speed(kernels: dict, seqs, heads: int, head_dim: int, device, *, warmup: int, reps: int, rounds: int) -> list:
    rows = []
    for seq in seqs:
        q, k, v = (t.to(device=device, dtype=torch.bfloat16) for t in synthetic_qkv(1, seq, heads, head_dim, "normal", 0))
        scale = head_dim ** -0.5
        flop = 4 * seq * seq * heads * head_dim
        medians = {name: [] for name in kernels}
        errors = {}
        for _ in range(rounds):
            for name, fn in kernels.items():
                if isinstance(fn, str) or name in errors:
                    continue
                try:
                    medians[name].append(_median_ms(lambda fn=fn: fn(q, k, v, scale), warmup=warmup, reps=reps,
                                                    device=device))
                except Exception as exc:  # noqa: BLE001 - a failing kernel is reported, the others still run
                    errors[name] = _reason(exc)
        for name, fn in kernels.items():
            row = {"seq": seq, "heads": heads, "head_dim": head_dim, "kernel": name}
            if isinstance(fn, str) or name in errors:
                row["skipped"] = fn if isinstance(fn, str) else errors[name]
            else:
                row["median_ms_per_round"] = medians[name]
                row["tflops_per_round"] = [flop / (ms * 1e-3) / 1e12 for ms in medians[name]]
                row["tflops"] = max(row["tflops_per_round"])
            rows.append(row)
        base = {r["kernel"]: r.get("tflops") for r in rows if r["seq"] == seq}
        for row in rows:
            if row["seq"] == seq and row.get("tflops") and base.get("fa4"):
                row["vs_fa4"] = row["tflops"] / base["fa4"]
            if row["seq"] == seq and row.get("tflops") and base.get("sdpa_cudnn"):
                row["vs_sdpa_cudnn"] = row["tflops"] / base["sdpa_cudnn"]
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def accuracy(kernels: dict, seq: int, heads: int, head_dim: int, dist: str, device) -> dict:
    q, k, v = (t.to(device=device, dtype=torch.bfloat16) for t in synthetic_qkv(1, seq, heads, head_dim, dist, 1))
    scale = head_dim ** -0.5
    ref, ref_lse = reference_attention(q, k, v, scale=scale, return_lse=True)
    case = {"seq": seq, "heads": heads, "head_dim": head_dim, "distribution": dist, "rel_l2_vs_fp64": {},
            "lse_max_abs_vs_fp64": {}, "emulator_vs_kernel": {}, "skipped": {}, "checks": []}
    outs = {}
    for name, fn in kernels.items():
        if name == "fa3_fp8_kernel":
            continue
        if isinstance(fn, str):
            case["skipped"][name] = fn
            continue
        try:
            out, lse = fn(q, k, v, scale, return_lse=True)
        except Exception as exc:  # noqa: BLE001 - the LSE path failing must not hide the output's error
            case.setdefault("lse_failed", {})[name] = _reason(exc)
            try:
                out, lse = fn(q, k, v, scale), None
            except Exception as exc:  # noqa: BLE001
                case["skipped"][name] = _reason(exc)
                continue
        outs[name] = out
        case["rel_l2_vs_fp64"][name] = rel_l2(out, ref)
        case["lse_max_abs_vs_fp64"][name] = (math.nan if lse is None else
                                             (lse.double() - ref_lse.double()).abs().max().item())
    from fluxlab.backends import emulated_hopper

    for name, (options, target_kernel) in EMULATORS.items():
        fn = emulated_hopper.emu_fa3_fp8 if name.startswith("emu_fa3_fp8") else emulated_hopper.emu_sage2
        start = time.perf_counter()
        out, lse = fn(q, k, v, scale=scale, return_lse=True, **options)
        case["rel_l2_vs_fp64"][name] = rel_l2(out, ref)
        case["lse_max_abs_vs_fp64"][name] = (lse.double() - ref_lse.double()).abs().max().item()
        case.setdefault("emulator_seconds", {})[name] = time.perf_counter() - start
        if target_kernel in outs:
            distance = rel_l2(out, outs[target_kernel])
            own = case["rel_l2_vs_fp64"][target_kernel]
            case["emulator_vs_kernel"][name] = distance
            case["checks"].append({"check": f"rel_l2({name}, {target_kernel}) / rel_l2({target_kernel}, fp64)",
                                   "value": distance / own, "target": f"<= {TARGET}", "ok": distance <= TARGET * own})
    return case


_version = distribution_version  # installed version of a distribution, None where absent


def markdown(data) -> str:
    lines = [f"# Quantised attention on Hopper vs FA4: {data['card']}", "",
             f"Command: `{data['command']}`  ", f"Date: {data['provenance']['date']}, git "
             f"{(data['provenance'].get('git') or {}).get('commit')}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()), "",
             "## Speed (bf16 inputs, B 1, D 128; TFLOP/s = 4·S²·H·D / median time; best of the rounds, each round's "
             "in brackets)", "", "| S | H | kernel | TFLOP/s | rounds | × fa4 | × cuDNN |", "|---|---|---|---|---|---|---|"]
    for row in data["speed"]:
        if "skipped" in row:
            lines.append(f"| {row['seq']} | {row['heads']} | {row['kernel']} | – | skipped: {row['skipped'][:120]} "
                         "| | |")
            continue
        rounds = " / ".join(f"{t:.0f}" for t in row["tflops_per_round"])
        lines.append(f"| {row['seq']} | {row['heads']} | {row['kernel']} | {row['tflops']:.0f} | {rounds} | "
                     f"{row.get('vs_fa4', math.nan):.3f} | {row.get('vs_sdpa_cudnn', math.nan):.3f} |")
    for case in data["accuracy"]:
        lines += ["", f"## Error: {case['distribution']} inputs, S {case['seq']}, H {case['heads']}, D "
                      f"{case['head_dim']}", "", "| kernel | rel-L2 vs fp64 | LSE max abs vs fp64 | emulator to kernel |",
                  "|---|---|---|---|"]
        for name, err in case["rel_l2_vs_fp64"].items():
            dist = case["emulator_vs_kernel"].get(name)
            lines.append(f"| {name} | {err:.3e} | {case['lse_max_abs_vs_fp64'][name]:.2e} | "
                         f"{'' if dist is None else f'{dist:.3e}'} |")
        if case["checks"]:
            lines += ["", "| check | value | target | ok |", "|---|---|---|---|"]
            lines += [f"| {c['check']} | {c['value']:.3f} | {c['target']} | {'yes' if c['ok'] else 'NO'} |"
                      for c in case["checks"]]
        lines += [f"- skipped {n}: {why}" for n, why in case["skipped"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="folder for hopper_quant.json / .md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small shapes: a dry run of the script (e.g. on a CPU)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sage-source", default=None, help="where the SageAttention 2 build came from (recorded)")
    parser.add_argument("--code-commit", default=None,
                        help="the fluxlab commit that ran, where the checkout has no git history (recorded)")
    args = parser.parse_args(argv)
    for name in ("warmup", "reps", "rounds"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {getattr(args, name)}")
    device = torch.device(args.device)
    seqs, heads, head_dim = (TINY["seqs"], TINY["heads"], TINY["head_dim"]) if args.tiny else \
        (FLUX_SEQS, HEADS, HEAD_DIM)
    kernels = {name: make_kernel(name, device) for name in KERNELS}
    data = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "command": "python benchmarks/hopper_quant.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "provenance": provenance(),
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                         "cudnn": torch.backends.cudnn.version(), "flash-attn-4": _version("flash-attn-4"),
                         "fa3-fwd": _version("fa3-fwd"), "flash-attn-3": _version("flash-attn-3"),
                         "sageattention": _version("sageattention"), "sageattention source": args.sage_source},
            "code_commit": args.code_commit, "target": {"emulator_to_kernel_over_kernel_error": TARGET}}
    start = time.perf_counter()
    data["speed"] = speed(kernels, seqs, heads, head_dim, device, warmup=args.warmup, reps=args.reps,
                          rounds=args.rounds)
    data["seconds_speed"] = time.perf_counter() - start
    data["accuracy"] = [accuracy(kernels, seqs[0], heads, head_dim, dist, device) for dist in DISTRIBUTIONS]
    data["seconds"] = time.perf_counter() - start
    write_results(Path(args.out), "hopper_quant", data, markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
