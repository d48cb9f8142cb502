"""FLUX.2 [dev] transformer step, eager vs torch.compile, diffusers' attention vs fluxlab's, in one run on one GPU.

    source benchmarks/device/env.sh && python3 benchmarks/flux2_compile.py --out $OUT/flux2_compile
    python3 benchmarks/flux2_compile.py --tiny --compile-backend aot_eager --out /tmp/flux2-compile  # CPU dry run

One transformer forward (= one denoising step of [dev], batch 1), random bf16 weights, at 1024^2 and 2048^2, for:
diffusers ``native`` eager; fluxlab attached with its automatic pick, eager; and both again with diffusers' regional
compile (``transformer.compile_repeated_blocks(fullgraph=True)``), plus fluxlab ``sdpa`` compiled (the kernel
diffusers' native runs, so the op's own cost shows). Each compiled row: its compile time (first call), graph breaks
(``torch._dynamo.utils.counters["graph_break"]``) and graphs compiled. Every row is compiled and warmed up first, then
timed in ``--rounds`` interleaved rounds of ``--calls`` calls (medians, minimum and quartiles reported); ``--profile``
rows get one profiled step each (GPU kernel time against wall time, heaviest kernels).
Issue 12's targets: fluxlab compiled <= 1.00x diffusers compiled at 1024^2 and <= 0.98x at 2048^2, fluxlab compiled
<= 0.85x fluxlab eager. Writes flux2_compile.json and flux2_compile.md (card, versions, git revision, command).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fluxlab.util import synchronize, time_calls  # noqa: E402
from flux2_step import (TEXT_TOKENS, TINY_SIZES, _error, _fmt, build_transformer, environment,  # noqa: E402
                        run_and_write, step_inputs)

SIZES = (1024, 2048)
TARGETS = {1024: 1.00, 2048: 0.98}  # fluxlab compiled / diffusers compiled
COMPILED_VS_EAGER_TARGET = 0.85  # fluxlab compiled / fluxlab eager
ROWS = ("diffusers_native_eager", "fluxlab_auto_eager", "diffusers_native_compiled", "fluxlab_auto_compiled",
        "fluxlab_sdpa_compiled")


def regional_compile(transformer, on: bool, backend: str) -> None:
    """diffusers' regional compile on (``compile_repeated_blocks``) or off (the blocks' compiled call dropped;
    dynamo's cache of compiled code stays, so turning it on again recompiles nothing already compiled)."""
    if on:
        transformer.compile_repeated_blocks(fullgraph=True, backend=backend)
    else:
        for module in transformer.modules():
            if type(module).__name__ in transformer._repeated_blocks:
                module._compiled_call_impl = None


def configure(name: str, transformer, args) -> None:
    """Route the attention as the row ``name`` says (and turn regional compile on or off)."""
    import fluxlab

    via, backend, mode = name.split("_")
    regional_compile(transformer, mode == "compiled", args.compile_backend)
    if via == "diffusers":
        transformer.set_attention_backend(backend)
    else:
        fluxlab.attach(transformer, backend=None if backend == "auto" else backend)


def unconfigure(name: str, transformer) -> None:
    import fluxlab

    if name.startswith("diffusers"):
        transformer.set_attention_backend("native")
    else:
        fluxlab.detach(transformer)


def prepare_row(name: str, transformer, inputs, device, args) -> dict:
    """One row's first call (compiling, for compiled rows), which kernel ran, and its warm-up; not timed."""
    import fluxlab
    from torch._dynamo.utils import counters

    via, backend, mode = name.split("_")
    row = {"row": name, "via": via, "backend": backend, "mode": mode, "ms": []}
    configure(name, transformer, args)
    counters.clear()
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            out = transformer(**inputs)[0]
            synchronize(device)
            row["first_call_s"] = time.perf_counter() - start  # includes compiling, for compiled rows
            if via == "fluxlab":
                with fluxlab.capture(transformer, to="meta", lse=False) as watched:  # which kernel really ran
                    transformer(**inputs)
                row["ran"] = watched.backends_used()
            for _ in range(args.warmup):
                transformer(**inputs)
            synchronize(device)
        row["_out"] = out
        if mode == "compiled":
            row["graph_breaks"] = sum(counters["graph_break"].values())
            row["graph_break_reasons"] = sorted(counters["graph_break"])[:10]
            row["graphs_compiled"] = counters["stats"]["unique_graphs"]
    except Exception as exc:  # an OOM, a kernel that cannot run here: recorded, the run goes on
        row["error"] = _error(exc)
        traceback.print_exc()
    finally:
        unconfigure(name, transformer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def time_rows(rows: dict, transformer, inputs, device, args) -> None:
    """Interleaved timing: every round times each row ``--calls`` times, in an order rotated per round, so clock
    and temperature drift over the run land on every row alike (timing rows one after another put a 1-2 %
    bias between neighbours in the earlier H200 run, larger than the effect measured)."""
    from torch._dynamo.utils import counters

    names = [name for name, row in rows.items() if "error" not in row]
    recompiles_before = counters["stats"]["unique_graphs"]
    for round_index in range(args.rounds):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            configure(name, transformer, args)
            try:
                with torch.inference_mode():
                    rows[name]["ms"] += time_calls(lambda: transformer(**inputs), warmup=0, repeats=args.calls,
                                                   device=device).times_ms
            finally:
                unconfigure(name, transformer)
    for name in names:
        times = sorted(rows[name]["ms"])
        rows[name]["ms_median"] = statistics.median(times)
        rows[name]["ms_min"] = times[0]
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        rows[name]["ms_iqr"] = [quartiles[0], quartiles[2]]
    # Switching rows must reuse compiled graphs; a graph compiled while timing would have been timed.
    for name in names:
        rows[name]["graphs_compiled_while_timing"] = counters["stats"]["unique_graphs"] - recompiles_before


def profile_rows(rows: dict, transformer, inputs, device, args) -> dict:
    """One profiled step per row in ``--profile``: wall time, the GPU's kernel time and the heaviest kernels, so
    a gap between two rows reads as "more GPU work" (extra copies, slower kernels) or "GPU idle" (launch, sync)."""
    from torch.profiler import ProfilerActivity, profile

    summaries = {}
    for name in args.profile or ():
        if name not in rows or "error" in rows[name]:
            continue
        configure(name, transformer, args)
        try:
            with torch.inference_mode():
                transformer(**inputs)
                synchronize(device)
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
                with profile(activities=activities) as prof:
                    start = time.perf_counter()
                    transformer(**inputs)
                    synchronize(device)
                    wall_ms = (time.perf_counter() - start) * 1e3
        finally:
            unconfigure(name, transformer)
        kernels = {}
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                entry = kernels.setdefault(event.name, [0, 0.0])
                entry[0] += 1
                entry[1] += event.device_time / 1e3  # us -> ms
        gpu_ms = sum(total for _, total in kernels.values())
        top = sorted(kernels.items(), key=lambda item: -item[1][1])[:12]
        summaries[name] = {"wall_ms": wall_ms, "gpu_kernel_ms": gpu_ms, "kernels": sum(c for c, _ in kernels.values()),
                           "gpu_busy": gpu_ms / wall_ms if wall_ms else None,
                           "top": [{"kernel": k[:120], "calls": c, "ms": t} for k, (c, t) in top]}
    return summaries


def _ratio(rows: dict, top: str, bottom: str):
    a, b = rows.get(top, {}).get("ms_median"), rows.get(bottom, {}).get("ms_median")
    return a / b if a and b else None


def targets(rows: dict, size: int) -> dict:
    vs_diffusers = _ratio(rows, "fluxlab_auto_compiled", "diffusers_native_compiled")
    vs_eager = _ratio(rows, "fluxlab_auto_compiled", "fluxlab_auto_eager")
    limit = TARGETS.get(size)
    return {
        "fluxlab_compiled_vs_diffusers_compiled": vs_diffusers, "target_vs_diffusers": limit,
        "met_vs_diffusers": None if vs_diffusers is None or limit is None else vs_diffusers <= limit,
        "fluxlab_compiled_vs_fluxlab_eager": vs_eager, "target_vs_eager": COMPILED_VS_EAGER_TARGET,
        "met_vs_eager": None if vs_eager is None else vs_eager <= COMPILED_VS_EAGER_TARGET,
        "diffusers_compiled_vs_diffusers_eager": _ratio(rows, "diffusers_native_compiled", "diffusers_native_eager"),
        "fluxlab_sdpa_compiled_vs_diffusers_compiled": _ratio(rows, "fluxlab_sdpa_compiled",
                                                              "diffusers_native_compiled"),
    }


def run(args) -> dict:
    import torch._dynamo

    from fluxlab.util import provenance, rel_l2

    if args.tiny:
        from fluxlab.models.tiny import TINY_CONFIGS

        config, device = dict(TINY_CONFIGS["dev"]["transformer"]), torch.device("cpu")
        sizes = args.sizes or TINY_SIZES
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run this on the GPU machine, or pass --tiny for a CPU dry run")
        config, device, sizes = {}, torch.device("cuda"), args.sizes or SIZES  # {}: diffusers' defaults = [dev]
    dtype = torch.bfloat16
    start = time.perf_counter()
    transformer = build_transformer(config, device, dtype, seed=args.seed)
    full = dict(transformer.config)
    results = {"environment": environment(device), "provenance": provenance(), "tiny": args.tiny,
               "compile": {"call": "transformer.compile_repeated_blocks(fullgraph=True)",
                           "backend": args.compile_backend, "torch_compile_default_mode": True},
               "model": {"params": sum(p.numel() for p in transformer.parameters()), "layers": full["num_layers"],
                         "single_layers": full["num_single_layers"], "heads": full["num_attention_heads"],
                         "head_dim": full["attention_head_dim"], "dtype": "bfloat16",
                         "build_s": time.perf_counter() - start},
               "warmup": args.warmup, "rounds": args.rounds, "calls_per_round": args.calls,
               "timing": "interleaved: each round times every row --calls times, order rotated per round",
               "sizes": {}}
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", at every diffusers switch
    for size in sizes:
        torch._dynamo.reset()  # each size compiles from scratch: static shapes, like a user's single-size run
        inputs = step_inputs(full, size, device, dtype, text_tokens=args.text_tokens)
        rows = {}
        for name in args.rows:
            rows[name] = prepare_row(name, transformer, inputs, device, args)
            print(f"{size}^2 {name}: ready ({rows[name].get('error', 'ok')}, {time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
        time_rows(rows, transformer, inputs, device, args)
        profiles = profile_rows(rows, transformer, inputs, device, args)
        for name, row in rows.items():
            print(f"{size}^2 {name}: {row.get('ms_median', row.get('error'))}", file=sys.stderr, flush=True)
        reference = rows.get("diffusers_native_eager", {}).get("_out")
        for row in rows.values():
            out = row.pop("_out", None)
            if out is not None and reference is not None:
                row["rel_l2_vs_diffusers_native_eager"] = rel_l2(out.float(), reference.float())
        results["sizes"][str(size)] = {"seq": args.text_tokens + (size // 16) ** 2, "rows": list(rows.values()),
                                       "targets": targets(rows, size), "profiles": profiles}
    regional_compile(transformer, False, args.compile_backend)
    results["total_s"] = time.perf_counter() - start
    return results


def markdown(results: dict) -> str:
    env, model = results["environment"], results["model"]
    git = (results.get("provenance") or {}).get("git") or {}
    lines = ["# FLUX.2 transformer step: eager vs regional torch.compile, diffusers vs fluxlab", "",
             f"{'TINY DRY RUN (CPU, tiny config) — not a measurement of FLUX.2 [dev]. ' if results['tiny'] else ''}"
             f"Card: {env.get('card', 'CPU')}; torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"Triton {env.get('triton')}, diffusers {env['diffusers']}, fluxlab {env['fluxlab']} "
             f"(git {git.get('commit', '?')}); {env['date']}.", f"Command: `{env['command']}`", "",
             f"Model: {model['params'] / 1e9:.2f} B parameters, {model['layers']} double + {model['single_layers']} "
             f"single blocks, bf16, random weights, batch 1; one forward = one [dev] step. Compiled: "
             f"`{results['compile']['call']}` (dynamo backend `{results['compile']['backend']}`). "
             f"{_timing_text(results)}", ""]
    for size, block in results["sizes"].items():
        lines += [f"## {size}x{size} (S = {block['seq']})", "",
                  "| row | kernel that ran | ms / step | first call (s) | graph breaks | graphs compiled "
                  "| rel-L2 vs diffusers eager | min | quartiles |", "|---|---|---|---|---|---|---|---|---|"]
        for row in block["rows"]:
            if "error" in row:
                lines.append(f"| {row['row']} | — | error: {row['error']} | | | | | | |")
                continue
            ran = ", ".join(row.get("ran", {})) or row["backend"]
            lines.append(f"| {row['row']} | {ran} | {row['ms_median']:.1f} | {_fmt(row.get('first_call_s'), '.1f')} "
                         f"| {_fmt(row.get('graph_breaks'), 'd')} | {_fmt(row.get('graphs_compiled'), 'd')} "
                         f"| {_fmt(row.get('rel_l2_vs_diffusers_native_eager'), '.2e')} | {_fmt(row.get('ms_min'), '.1f')} "
                         f"| {_quartiles(row)} |")
        t = block["targets"]
        lines += ["", "Graphs compiled 0: the row reused graphs an earlier row compiled (fluxlab's backend is chosen "
                  "inside its op, so every fluxlab row runs the same graphs).", "",
                  f"fluxlab compiled / diffusers compiled = {_fmt(t['fluxlab_compiled_vs_diffusers_compiled'], '.3f')}"
                  f" (target <= {_fmt(t['target_vs_diffusers'], '.2f')}: {t['met_vs_diffusers']}); fluxlab compiled / "
                  f"fluxlab eager = {_fmt(t['fluxlab_compiled_vs_fluxlab_eager'], '.3f')} (target <= "
                  f"{t['target_vs_eager']:.2f}: {t['met_vs_eager']}); diffusers compiled / eager = "
                  f"{_fmt(t['diffusers_compiled_vs_diffusers_eager'], '.3f')}; fluxlab sdpa compiled / diffusers "
                  f"compiled = {_fmt(t['fluxlab_sdpa_compiled_vs_diffusers_compiled'], '.3f')}.", ""]
        lines += _profile_lines(block.get("profiles") or {})
    return "\n".join(lines)


def _timing_text(results: dict) -> str:
    if "rounds" in results:
        return (f"Each row compiled and warmed up ({results['warmup']} calls) first, then timed in {results['rounds']} "
                f"interleaved rounds x {results['calls_per_round']} calls (order rotated per round); median, "
                "minimum and quartiles of all timed calls.")
    return f"Median of {results['repeats']} after {results['warmup']} warm-up calls, rows timed one after another."


def _quartiles(row: dict) -> str:
    iqr = row.get("ms_iqr")
    return f"{iqr[0]:.1f}–{iqr[1]:.1f}" if iqr else "—"


def _profile_lines(profiles: dict) -> list:
    if not profiles:
        return []
    lines = ["One profiled step per row (torch.profiler): wall time, the sum of GPU kernel times, and how busy "
             "that kept the GPU.", "", "| row | wall ms | GPU kernels ms | GPU busy | kernels |", "|---|---|---|---|---|"]
    for name, p in profiles.items():
        lines.append(f"| {name} | {p['wall_ms']:.1f} | {p['gpu_kernel_ms']:.1f} | {_fmt(p['gpu_busy'], '.3f')} "
                     f"| {p['kernels']} |")
    for name, p in profiles.items():
        lines += ["", f"Heaviest kernels, {name}:", ""]
        lines += [f"- {k['ms']:.2f} ms, {k['calls']}x `{k['kernel'][:90]}`" for k in p["top"][:8]]
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for flux2_compile.json and flux2_compile.md")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"image sides (default {SIZES}; --tiny {TINY_SIZES})")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the first (compiling) one")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (each row timed in every round)")
    parser.add_argument("--calls", type=int, default=2, help="timed calls per row per round")
    parser.add_argument("--profile", nargs="*", default=[], choices=ROWS,
                        help="rows to profile for one step each (GPU kernel time vs wall time, heaviest kernels)")
    parser.add_argument("--compile-backend", default="inductor", help="dynamo backend (aot_eager: a quick dry run)")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny transformer on CPU: a dry run of the code path")
    return run_and_write(parser, parser.parse_args(argv), run, markdown, "flux2_compile")


if __name__ == "__main__":
    sys.exit(main())
