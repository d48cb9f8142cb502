"""What exact attention kernels measure on the gate's statistics: the data the gate's limits are derived from.

    .venv/bin/python benchmarks/gate_thresholds.py                       # CPU -> benchmarks/results/cpu/
    python benchmarks/gate_thresholds.py --device cuda                   # GPU -> benchmarks/results/<h100|h200>/
    .venv/bin/python benchmarks/gate_thresholds.py --device cuda --dry-run   # the GPU run's code path, shrunk, on CPU

Every exact kernel that runs here (torch's SDPA kernels, flex, FA/cuDNN where present, the emulated bf16 flash
kernels of the exact class on a CPU, and reference variants that reduce in other orders: float32 softmax, online
softmax over 64-key blocks, two key halves merged by their LSE, keys in reverse order, P rounded to the dtype before
P.V) on synthetic inputs (three distributions, ragged lengths, batch > 1 with different content, the text+image
split) in bf16/fp16/fp32. Per run: the error size over the yardstick, the bias (signed and toward zero) and bias x
sqrt(rows), the worst head / batch element / segment ratio, and top-channel flips of clear rows at several margins.
Kernels that are not exact (truncation, rounding up, quantised) are measured too, as "info": they show how far the
gate separates them. ``exact_summary`` holds the worst exact numbers; ``derive_gate_rule`` below turns the committed
files into the gate's limits, ``fluxlab.compare.tolerances.GATE_RULE`` (tests/test_gate.py checks that it does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

import fluxlab
from fluxlab import numerics, registry
from fluxlab.backends.reference import reference_attention
from fluxlab.compare.gate import Yardstick, baseline_attention, comparable
from fluxlab.compare.inputs import DISTRIBUTIONS, InputSpec
from fluxlab.compare.metrics import error_stats
from fluxlab.compare.tolerances import (EXACT_RULE, FLIP_MARGIN_EPS, GATE_RULE, QUANTISED_BUDGET, GateRule,
                                       yardstick_ratios)
from fluxlab.dispatch import plan
from fluxlab.platform import platform_for_device
from fluxlab.util import atomic_write, parse_dtype, provenance, torch_dtype_name

ROOT = Path(__file__).resolve().parents[1]
FLIP_MARGINS = (1.0, 2.0, FLIP_MARGIN_EPS, 8.0)  # the gate uses FLIP_MARGIN_EPS; the others show the trend
LARGE_ROWS = 4096  # inputs with at least this many query rows set the bias floor (smaller ones: bias x sqrt(rows))
QUERY_CHUNK = 1024  # the reference variants hold [B, H, chunk, S] scores at most

# (batch, seq, heads, head_dim, text tokens): every distribution and dtype on the small shapes; the default CPU
# inputs (compare.inputs.CPU_INPUTS: ragged S, batch 2, text + image) in bf16 and fp16, exact kernels only.
CPU_SHAPES = [
    (1, 77, 3, 64, None), (1, 256, 4, 64, None), (2, 256, 4, 128, 28), (1, 320, 2, 128, None), (2, 192, 2, 64, 21),
]
CPU_DTYPES, CPU_SEEDS, CPU_LARGE_DTYPES = ("bf16", "fp16", "fp32"), (0,), ("bf16", "fp16")
# GPU: the FLUX.2 shapes (512 text tokens; 4608 = 1024^2, 3537 = 880^2 with batch 2, 16896 = 2048^2), sized to
# finish in about two minutes on an H100 (flex compiles once per shape and dtype).
GPU_SHAPES = [(1, 4608, 24, 128, 512), (2, 3537, 24, 128, 512)]
GPU_LARGE = [(1, 16896, 48, 128, 512)]  # normal distribution, one seed, exact kernels only: the largest FLUX.2 call
GPU_DTYPES, GPU_SEEDS, GPU_LARGE_DTYPES = ("bf16", "fp16"), (0,), ("bf16",)


# Where the gate's numbers come from (fluxlab.compare.tolerances.GATE_RULE), and the margins put on the worst measured
# exact kernel.
GATE_FILES = ("cpu/gate_thresholds.json", "h100/gate_thresholds.json", "h200/gate_thresholds.json")
GATE_MARGINS = {"bias": 2.0, "slice_pass": 1.35, "slice_warn": 2.0, "flip_pass": 2.0, "flip_warn": 10.0}


def _round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (a limit never below what it was derived from)."""
    if value <= 0 or not math.isfinite(value):
        return value
    exponent = math.floor(math.log10(value)) - digits + 1
    return float(f"{math.ceil(value / 10**exponent - 1e-9) * 10**exponent:.{digits}g}")


def small_input_bias_z(data: dict) -> float:
    """The worst exact kernel's |bias| x sqrt(rows) over the measured means of fewer than ``large_rows`` rows (whole
    output or one head): the noise the ``bias_z`` term is there for. A mean over more rows is judged by the floor,
    so an exact kernel's tiny systematic bias on a huge input (sqrt(rows) ~ 900) cannot loosen the small-input
    limit."""
    small, worst = data["large_rows"], 0.0
    for run in data["runs"]:
        if run["group"] == "exact" and run["status"] == "ran":
            for bias, rows in ((run["bias"], run["rows"]), (run["worst_head_bias"], run["head_rows"])):
                if rows < small:
                    worst = max(worst, abs(bias) * math.sqrt(rows))
    return worst


def derive_gate_rule(measurements) -> GateRule:
    """The gate's limits from measurement files (dicts this script writes): the worst exact kernel's bias on large
    inputs, bias x sqrt(rows) on small ones, worst-slice ratio and clear-flip rate, times ``GATE_MARGINS``. A measured
    flip rate of 0 gives the measurement's resolution (one row of the largest input) instead."""
    worst = {"bias": 0.0, "bias_z": 0.0, "slice_ratio": 0.0, "flip_rate": 0.0, "flip_resolution": 1.0}
    for data in measurements:
        summary = data["exact_summary"]
        worst["bias"] = max(worst["bias"], summary["max_abs_bias_large"])
        worst["bias_z"] = max(worst["bias_z"], small_input_bias_z(data))
        worst["slice_ratio"] = max(worst["slice_ratio"], summary["max_slice_ratio"])
        worst["flip_rate"] = max(worst["flip_rate"], summary["max_flip_rate"])
        worst["flip_resolution"] = min(worst["flip_resolution"], 1.0 / summary["max_clear_rows"])
    flip = max(worst["flip_rate"], worst["flip_resolution"])
    slice_pass = _round_up(GATE_MARGINS["slice_pass"] * worst["slice_ratio"])
    slice_warn = _round_up(GATE_MARGINS["slice_warn"] * slice_pass)
    return GateRule(bias_floor=_round_up(GATE_MARGINS["bias"] * worst["bias"]),
                    bias_z=_round_up(GATE_MARGINS["bias"] * worst["bias_z"]),
                    slice_pass=slice_pass, slice_warn=slice_warn,
                    flip_margin_eps=FLIP_MARGIN_EPS, flip_pass=_round_up(GATE_MARGINS["flip_pass"] * flip),
                    flip_warn=_round_up(GATE_MARGINS["flip_warn"] * flip),
                    quantised_slice_pass=_round_up(QUANTISED_BUDGET.pass_rel_l2 * slice_pass / EXACT_RULE.pass_rel_l2),
                    quantised_slice_warn=_round_up(QUANTISED_BUDGET.warn_rel_l2 * slice_warn / EXACT_RULE.warn_rel_l2))


# --------------------------------------------------------------------------------- reference variants (exact)


def _heads_first(*tensors):
    return [t.transpose(1, 2).float() for t in tensors]


def _chunked(q, fn):
    """[B, S, H, D] out from ``fn(q_chunk [B, H, c, D]) -> [B, H, c, D]`` over query chunks."""
    return torch.cat([fn(q[:, :, i:i + QUERY_CHUNK]) for i in range(0, q.shape[2], QUERY_CHUNK)], dim=2)


def fp32_softmax(q, k, v, *, scale, causal=False, return_lse=False):
    """float32 scores, softmax and P.V in one pass, output rounded to the dtype (round to nearest even)."""
    qh, kh, vh = _heads_first(q, k, v)
    out = _chunked(qh, lambda c: torch.softmax(c @ kh.transpose(-1, -2) * scale, dim=-1) @ vh)
    return out.transpose(1, 2).to(q.dtype)


def online_blocks(q, k, v, *, scale, causal=False, return_lse=False, block=64):
    """Online softmax over key blocks of 64 in float32 (a flash kernel's reduction order)."""
    qh, kh, vh = _heads_first(q, k, v)

    def rows(c):
        m = torch.full(c.shape[:-1] + (1,), -math.inf, device=c.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(c.shape[:-1] + (vh.shape[-1],), device=c.device)
        for j in range(0, kh.shape[2], block):
            s = c @ kh[:, :, j:j + block].transpose(-1, -2) * scale
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            alpha = torch.exp(m - m_new)
            l = l * alpha + p.sum(dim=-1, keepdim=True)
            acc = acc * alpha + p @ vh[:, :, j:j + block]
            m = m_new
        return acc / l
    return _chunked(qh, rows).transpose(1, 2).to(q.dtype)


def split_halves(q, k, v, *, scale, causal=False, return_lse=False):
    """Keys in two halves, each softmax-ed on its own, merged by their LSE (split-KV / ring attention)."""
    qh, kh, vh = _heads_first(q, k, v)
    half = kh.shape[2] // 2

    def rows(c):
        parts = []
        for sl in (slice(0, half), slice(half, None)):
            s = c @ kh[:, :, sl].transpose(-1, -2) * scale
            lse = torch.logsumexp(s, dim=-1, keepdim=True)
            parts.append((torch.exp(s - lse) @ vh[:, :, sl], lse))
        (o1, l1), (o2, l2) = parts
        total = torch.logaddexp(l1, l2)
        return o1 * torch.exp(l1 - total) + o2 * torch.exp(l2 - total)
    return _chunked(qh, rows).transpose(1, 2).to(q.dtype)


def reversed_keys(q, k, v, *, scale, causal=False, return_lse=False):
    """The same float32 softmax with the keys (and values) in reverse order: other summation order."""
    return fp32_softmax(q, k.flip(1), v.flip(1), scale=scale)


def probs_in_dtype(q, k, v, *, scale, causal=False, return_lse=False):
    """P rounded to the dtype before P.V, normaliser from the float32 P (what FA2/cuDNN-style kernels do)."""
    qh, kh, vh = _heads_first(q, k, v)
    low = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.float32

    def rows(c):
        s = c @ kh.transpose(-1, -2) * scale
        p = torch.exp(s - s.amax(dim=-1, keepdim=True))
        return (p.to(low).float() @ vh) / p.sum(dim=-1, keepdim=True)
    return _chunked(qh, rows).transpose(1, 2).to(q.dtype)


# ----------------------------------------------------------------------------- not exact (information only)


def _rounded(mode):
    def kernel(q, k, v, *, scale, causal=False, return_lse=False):
        exact = fp32_softmax(q.float(), k.float(), v.float(), scale=scale)
        if q.dtype != torch.bfloat16:
            return exact.to(q.dtype)
        if mode == "up":
            low = exact.to(torch.bfloat16)
            below = low.float() < exact
            return torch.where(below, torch.nextafter(low, torch.full_like(low, math.inf)), low)
        return numerics.to_bf16(exact, numerics.RTZ)
    return kernel


def scores_in_dtype(q, k, v, *, scale, causal=False, return_lse=False):
    """Scores and probabilities rounded to the dtype (a sloppy kernel: torch math with low-precision reductions)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    out = _chunked(qh, lambda c: torch.softmax(c @ kh.transpose(-1, -2) * scale, dim=-1).to(q.dtype) @ vh)
    return out.transpose(1, 2)


VARIANTS = {"ref_fp32_softmax": fp32_softmax, "ref_online_blocks64": online_blocks, "ref_split_halves": split_halves,
            "ref_reversed_keys": reversed_keys, "ref_probs_in_dtype": probs_in_dtype}
INFO_VARIANTS = {"info_round_up_bf16": _rounded("up"), "info_round_to_zero_bf16": _rounded("rtz"),
                 "info_scores_in_dtype": scores_in_dtype}
CPU_INFO_SPECS = ("emu_aiter:how_v3_bf16_cvt=2", "emu_sage", "emu_aiter_sage")
EXACT_EMULATED_SPECS = ("emu_bf16", "emu_aiter:how_v3_bf16_cvt=0", "emu_aiter:how_v3_bf16_cvt=1")


def register_variants() -> None:
    for name, fn in {**VARIANTS, **INFO_VARIANTS}.items():
        fluxlab.register_backend(name, fn, replace=True, description="benchmarks/gate_thresholds.py variant")


def kernels_for(platform) -> tuple[list[str], list[str]]:
    """(exact specs, info specs) that run on ``platform``."""
    exact, info = [], []
    for backend in registry.all_backends():
        if backend.name == "reference" or backend.name in VARIANTS or backend.name in INFO_VARIANTS:
            continue
        if backend.platform_reasons(platform) or backend.caps.emulated:
            continue
        (info if backend.caps.quantised else exact).append(backend.name)
    if platform.vendor == "cpu":
        exact += list(EXACT_EMULATED_SPECS)
        info += list(CPU_INFO_SPECS)
    return exact + list(VARIANTS), info + list(INFO_VARIANTS)


# ------------------------------------------------------------------------------------------------ measuring


def measure_run(out, yardstick: Yardstick, dtype) -> dict:
    stats = yardstick.measure(out)
    size = error_stats(*comparable(out, yardstick))
    rel_ratio, max_ratio = yardstick_ratios(size, yardstick.baseline, yardstick.rounding)
    worst = {kind: (stats.worst_slice(kind).ratio if stats.worst_slice(kind) else None)
             for kind in ("head", "batch", "segment")}
    flips = {}
    for margin in FLIP_MARGINS:
        clear = _clear_rows(yardstick, margin, dtype)
        flipped = int((clear & (out.double().argmax(dim=-1) != yardstick.top_channel)).sum().item())
        flips[f"{margin:g}"] = {"clear_rows": int(clear.sum().item()), "flipped_rows": flipped}
    return {"rel_l2": size.rel_l2, "rel_l2_ratio": rel_ratio, "max_abs_ratio": max_ratio,
            "signed_bias": stats.signed_bias, "magnitude_bias": stats.magnitude_bias, "bias": stats.bias,
            "rows": stats.rows, "bias_z": abs(stats.bias) * math.sqrt(stats.rows),
            "worst_head_bias": stats.worst_head_bias, "head_rows": stats.head_rows,
            "head_bias_z": abs(stats.worst_head_bias) * math.sqrt(stats.head_rows),
            "worst_slice_ratio": max((r for r in worst.values() if r is not None), default=None),
            "worst_head_ratio": worst["head"], "worst_batch_ratio": worst["batch"],
            "worst_segment_ratio": worst["segment"], "flips": flips,
            "nonfinite": stats.nonfinite_where_finite}


def _clear_rows(yardstick, margin, dtype):
    ref = yardstick.ref
    top = ref.topk(2, dim=-1).values
    scale = ref.abs().amax(dim=-1)
    return ((top[..., 0] - top[..., 1]) > margin * torch.finfo(dtype).eps * scale) & (scale > 0)


def run_case(spec: InputSpec, dtype, seed, device, exact, info, platform) -> list[dict]:
    """Every kernel of ``exact`` and ``info`` on one input: one dict per kernel."""
    case = spec.materialise(dtype, seed, device)
    ref = reference_attention(case.q, case.k, case.v, scale=case.scale)
    base = baseline_attention(case.q, case.k, case.v, scale=case.scale)
    yardstick = Yardstick(ref, base, dtype, text_tokens=case.text_tokens)
    del base
    rows = []
    for group, specs in (("exact", exact), ("info", info)):
        for label in specs:
            name = label.split(":")[0]
            if registry.get_backend(name).caps.emulated and dtype == torch.float32:
                continue  # emulators model bf16 kernels: judged on bf16 inputs
            try:
                run = plan(case.q, case.k, case.v, backend=label, scale=case.scale, fallback=False, platform=platform)
                out = run(case.q, case.k, case.v)
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot run this input is recorded, not fatal
                rows.append({"kernel": label, "group": group, "status": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            row = {"kernel": label, "group": group, "status": "ran", **measure_run(out, yardstick, dtype)}
            rows.append(row)
            del out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    meta = {"input": spec.name, "distribution": spec.distribution, "shape": list(case.shape),
            "text_tokens": case.text_tokens, "dtype": torch_dtype_name(dtype), "seed": seed}
    return [{**meta, **row} for row in rows]


def summarise(runs: list[dict]) -> dict:
    exact = [r for r in runs if r["group"] == "exact" and r["status"] == "ran"]
    key = f"{FLIP_MARGIN_EPS:g}"

    def worst(field, rows=exact):
        values = [r[field] for r in rows if r.get(field) is not None]
        best = max(values) if values else 0.0
        at = next((r for r in rows if r.get(field) == best), None)
        return best, (f"{at['kernel']} on {at['input']} {at['dtype']} B{at['shape'][0]} seed {at['seed']}"
                      if at else None)

    large = [r for r in exact if r["rows"] >= LARGE_ROWS]
    abs_bias = [dict(r, abs_bias=abs(r["bias"]), abs_head_bias=abs(r["worst_head_bias"])) for r in exact]
    bias_large, bias_large_at = worst("abs_bias", [dict(r, abs_bias=abs(r["bias"])) for r in large])
    bias_z, bias_z_at = worst("bias_z")
    head_z, head_z_at = worst("head_bias_z")
    flip_rates = [dict(r, flip_rate=r["flips"][key]["flipped_rows"] / max(r["flips"][key]["clear_rows"], 1))
                  for r in exact]
    summary = {
        "kernels": sorted({r["kernel"] for r in exact}), "runs": len(exact),
        "max_rel_l2_ratio": worst("rel_l2_ratio"), "max_max_abs_ratio": worst("max_abs_ratio"),
        "max_abs_bias": worst("abs_bias", abs_bias), "max_abs_head_bias": worst("abs_head_bias", abs_bias),
        "max_abs_bias_large": bias_large, "max_abs_bias_large_at": bias_large_at,
        "max_bias_z": max(bias_z, head_z), "max_bias_z_at": bias_z_at if bias_z >= head_z else head_z_at,
        "max_slice_ratio": worst("worst_slice_ratio")[0], "max_slice_ratio_at": worst("worst_slice_ratio")[1],
        "flip_margin_eps": FLIP_MARGIN_EPS, "max_flip_rate": worst("flip_rate", flip_rates)[0],
        "max_flip_rate_at": worst("flip_rate", flip_rates)[1],
        "max_clear_rows": max(r["flips"][key]["clear_rows"] for r in exact),
        "flipped_rows_by_margin": {m: sum(r["flips"][m]["flipped_rows"] for r in exact) for m in exact[0]["flips"]},
        "clear_rows_by_margin": {m: sum(r["flips"][m]["clear_rows"] for r in exact) for m in exact[0]["flips"]},
    }
    for name in ("max_rel_l2_ratio", "max_max_abs_ratio", "max_abs_bias", "max_abs_head_bias"):
        summary[name], summary[name + "_at"] = summary[name]
    info = {}
    for kernel in sorted({r["kernel"] for r in runs if r["group"] == "info" and r["status"] == "ran"}):
        rows = [r for r in runs if r["kernel"] == kernel and r["status"] == "ran"]
        info[kernel] = {"min_abs_bias": min(abs(r["bias"]) for r in rows),
                        "max_abs_bias": max(abs(r["bias"]) for r in rows),
                        "max_rel_l2_ratio": max(r["rel_l2_ratio"] for r in rows),
                        "max_slice_ratio": max(r["worst_slice_ratio"] or 0 for r in rows)}
    return {"exact_summary": summary, "info_summary": info}


def input_set(device_type: str, dry_run: bool):
    """[(InputSpec, dtype, seed, with_info)]: ``shapes`` with every distribution, dtype and seed, the not-exact
    kernels too; the large inputs with one seed, exact kernels only."""
    if device_type == "cuda":
        shapes, dtypes, seeds = GPU_SHAPES, GPU_DTYPES, GPU_SEEDS
        large = [InputSpec(s, h, d, distribution="normal", text_tokens=t, batch=b) for b, s, h, d, t in GPU_LARGE]
        large_dtypes = GPU_LARGE_DTYPES
    else:
        from fluxlab.compare.inputs import CPU_INPUTS

        shapes, dtypes, seeds, large, large_dtypes = CPU_SHAPES, CPU_DTYPES, CPU_SEEDS, list(CPU_INPUTS), CPU_LARGE_DTYPES
    if dry_run:  # the same structure, shrunk so a CPU runs it in seconds
        shrink = lambda s: (s[0], max(33, s[1] // 32), max(2, s[2] // 8), s[3], s[4] and max(1, s[4] // 32))  # noqa: E731
        shapes, seeds = [shrink(s) for s in shapes][:2], seeds[:1]
        large = [InputSpec(*shrink((x.batch, x.seq, x.heads, x.head_dim, x.text_tokens))[1:4], distribution=x.distribution,
                           text_tokens=shrink((0, 0, 0, 0, x.text_tokens))[4], batch=x.batch) for x in large]
    cases = [(InputSpec(s, h, d, distribution=dist, text_tokens=t, batch=b), dtype, seed, True)
             for b, s, h, d, t in shapes for dist in DISTRIBUTIONS for dtype in dtypes for seed in seeds]
    cases += [(spec, dtype, 0, False) for spec in large for dtype in large_dtypes]
    return cases


def default_out(device: torch.device) -> Path:
    if device.type != "cuda":
        return ROOT / "benchmarks" / "results" / "cpu"
    name = torch.cuda.get_device_name(device).lower()
    card = next((c for c in ("h200", "h100", "b200", "mi300x", "mi355x") if c in name), "gpu")
    return ROOT / "benchmarks" / "results" / card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, help="folder for gate_thresholds.json (default: benchmarks/results/"
                        "cpu, or the card's folder for cuda)")
    parser.add_argument("--dry-run", action="store_true", help="the --device run's input structure, shrunk, on "
                        "this machine's CPU (checks the script; writes to --out only when given)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU here (use --dry-run to check the script on a CPU)")
    register_variants()
    platform = platform_for_device(device)
    exact, info = kernels_for(platform)
    cases = input_set(torch.device(args.device).type, args.dry_run)
    start = time.perf_counter()
    out = None if args.dry_run and args.out is None else (args.out or default_out(device))
    runs = []
    for i, (spec, dtype, seed, with_info) in enumerate(cases):
        runs += run_case(spec, parse_dtype(dtype), seed, device, exact, info if with_info else [], platform)
        print(f"[{i + 1}/{len(cases)}] {spec.name} {dtype} seed {seed} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
        if out is not None:  # after every input: an interrupted run keeps what it measured (complete: false)
            write(out, argv, args, device, runs, start, complete=i + 1 == len(cases))
    if out is None:
        print(json.dumps(summarise(runs)["exact_summary"], indent=1))
        return 0
    print(f"wrote {out / 'gate_thresholds.json'} ({len(runs)} runs, {time.perf_counter() - start:.0f} s)")
    return 0


def write(out: Path, argv, args, device, runs, start, *, complete: bool) -> None:
    data = {"benchmark": "gate_thresholds", "command": "python benchmarks/gate_thresholds.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "provenance": provenance(), "device": str(device), "dry_run": args.dry_run, "complete": complete,
            "seconds": round(time.perf_counter() - start, 1), "large_rows": LARGE_ROWS,
            "flip_margins": list(FLIP_MARGINS), "gate_rule_at_measurement": dataclasses.asdict(GATE_RULE),
            **summarise(runs), "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "gate_thresholds.json", json.dumps(data, indent=1))


if __name__ == "__main__":
    sys.exit(main())
