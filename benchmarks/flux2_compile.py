"""FLUX.2 [dev] transformer step, eager vs torch.compile, diffusers' attention vs fluxlab's, in one run on one GPU.

    source benchmarks/device/env.sh && python3 benchmarks/flux2_compile.py --out $OUT/flux2_compile
    python3 benchmarks/flux2_compile.py --tiny --compile-backend aot_eager --out /tmp/flux2-compile  # CPU dry run

One transformer forward (= one denoising step of [dev], batch 1), random bf16 weights, at 1024^2 and 2048^2, for:
diffusers ``native`` eager; fluxlab attached with its automatic pick, eager; and both again with diffusers' regional
compile (``transformer.compile_repeated_blocks(fullgraph=True)``), plus fluxlab ``sdpa`` compiled (the kernel
diffusers' native runs, so the op's own cost shows). Each compiled row: its compile time (first call), graph breaks
(``torch._dynamo.utils.counters["graph_break"]``) and graphs compiled. Medians of ``--repeats`` after ``--warmup``.
Issue 12's targets: fluxlab compiled <= 1.00x diffusers compiled at 1024^2 and <= 0.98x at 2048^2, fluxlab compiled
<= 0.85x fluxlab eager. Writes flux2_compile.json and flux2_compile.md (card, versions, git revision, command).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux2_step import (TEXT_TOKENS, TINY_SIZES, build_transformer, environment, run_and_write,  # noqa: E402
                        step_inputs)

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


def _error(exc) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def run_row(name: str, transformer, inputs, device, args) -> dict:
    """One row: route the attention as ``name`` says, warm up (the first call compiles), time."""
    import fluxlab
    from fluxlab.util import time_calls
    from torch._dynamo.utils import counters

    via, backend, mode = name.split("_")
    row = {"row": name, "via": via, "backend": backend, "mode": mode}
    compiled = mode == "compiled"
    regional_compile(transformer, compiled, args.compile_backend)
    if via == "diffusers":
        transformer.set_attention_backend(backend)
    else:
        fluxlab.attach(transformer, backend=None if backend == "auto" else backend)
    counters.clear()
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            out = transformer(**inputs)[0]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row["first_call_s"] = time.perf_counter() - start  # includes compiling, for compiled rows
            if via == "fluxlab":
                with fluxlab.capture(transformer, to="meta", lse=False) as watched:  # which kernel really ran
                    transformer(**inputs)
                row["ran"] = watched.backends_used()
            timing = time_calls(lambda: transformer(**inputs), warmup=args.warmup, repeats=args.repeats,
                                device=device)
        row["ms"] = timing.times_ms
        row["ms_median"] = timing.median_ms
        row["_out"] = out
        if compiled:
            row["graph_breaks"] = sum(counters["graph_break"].values())
            row["graph_break_reasons"] = sorted(counters["graph_break"])[:10]
            row["graphs_compiled"] = counters["stats"]["unique_graphs"]
    except Exception as exc:  # an OOM, a kernel that cannot run here: recorded, the run goes on
        row["error"] = _error(exc)
        traceback.print_exc()
    finally:
        if via == "diffusers":
            transformer.set_attention_backend("native")
        else:
            fluxlab.detach(transformer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


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
               "warmup": args.warmup, "repeats": args.repeats, "sizes": {}}
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", at every diffusers switch
    for size in sizes:
        torch._dynamo.reset()  # each size compiles from scratch: static shapes, like a user's single-size run
        inputs = step_inputs(full, size, device, dtype, text_tokens=args.text_tokens)
        rows = {}
        for name in args.rows:
            rows[name] = run_row(name, transformer, inputs, device, args)
            print(f"{size}^2 {name}: {rows[name].get('ms_median', rows[name].get('error'))} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        reference = rows.get("diffusers_native_eager", {}).get("_out")
        for row in rows.values():
            out = row.pop("_out", None)
            if out is not None and reference is not None:
                row["rel_l2_vs_diffusers_native_eager"] = rel_l2(out.float(), reference.float())
        results["sizes"][str(size)] = {"seq": args.text_tokens + (size // 16) ** 2, "rows": list(rows.values()),
                                       "targets": targets(rows, size)}
    regional_compile(transformer, False, args.compile_backend)
    results["total_s"] = time.perf_counter() - start
    return results


def _fmt(value, spec) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


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
             f"`{results['compile']['call']}` (dynamo backend `{results['compile']['backend']}`). Median of "
             f"{results['repeats']} after {results['warmup']} warm-up calls.", ""]
    for size, block in results["sizes"].items():
        lines += [f"## {size}x{size} (S = {block['seq']})", "",
                  "| row | kernel that ran | ms / step | first call (s) | graph breaks | graphs compiled "
                  "| rel-L2 vs diffusers eager |", "|---|---|---|---|---|---|---|"]
        for row in block["rows"]:
            if "error" in row:
                lines.append(f"| {row['row']} | — | error: {row['error']} | | | | |")
                continue
            ran = ", ".join(row.get("ran", {})) or row["backend"]
            lines.append(f"| {row['row']} | {ran} | {row['ms_median']:.1f} | {_fmt(row.get('first_call_s'), '.1f')} "
                         f"| {_fmt(row.get('graph_breaks'), 'd')} | {_fmt(row.get('graphs_compiled'), 'd')} "
                         f"| {_fmt(row.get('rel_l2_vs_diffusers_native_eager'), '.2e')} |")
        t = block["targets"]
        lines += ["", "Graphs compiled 0: the row reused graphs an earlier row compiled (fluxlab's backend is chosen "
                  "inside its op, so every fluxlab row runs the same graphs).", "",
                  f"fluxlab compiled / diffusers compiled = {_fmt(t['fluxlab_compiled_vs_diffusers_compiled'], '.3f')}"
                  f" (target <= {_fmt(t['target_vs_diffusers'], '.2f')}: {t['met_vs_diffusers']}); fluxlab compiled / "
                  f"fluxlab eager = {_fmt(t['fluxlab_compiled_vs_fluxlab_eager'], '.3f')} (target <= "
                  f"{t['target_vs_eager']:.2f}: {t['met_vs_eager']}); diffusers compiled / eager = "
                  f"{_fmt(t['diffusers_compiled_vs_diffusers_eager'], '.3f')}; fluxlab sdpa compiled / diffusers "
                  f"compiled = {_fmt(t['fluxlab_sdpa_compiled_vs_diffusers_compiled'], '.3f')}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for flux2_compile.json and flux2_compile.md")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"image sides (default {SIZES}; --tiny {TINY_SIZES})")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the first (compiling) one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile-backend", default="inductor", help="dynamo backend (aot_eager: a quick dry run)")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny transformer on CPU: a dry run of the code path")
    return run_and_write(parser, parser.parse_args(argv), run, markdown, "flux2_compile")


if __name__ == "__main__":
    sys.exit(main())
