"""Issue 14 on a GPU: verdict-gated autotune on the [dev]-size transformer, and the full attention sweep's wall time.

    python3 benchmarks/decide_gpu.py --out $OUT                 # on the GPU (H100/H200)
    python3 benchmarks/decide_gpu.py --tiny --out /tmp/decide   # the same code paths on CPU, in seconds

1. Autotune: the [dev]-size transformer (random bf16 weights, 8 + 48 blocks, 48 heads x 128) at 1024^2 (and
   2048^2 with --sizes 1024,2048); q/k/v captured at every attention layer of one forward, each exact candidate
   (fa4, sdpa_cudnn, sdpa_flash, flex, aiter_triton where they run) timed and judged per layer with
   ``fluxlab.decide.autotune_records``; then the step-level confirmation (``fluxlab.decide.confirm_plan``): the
   real step under the per-layer plan, the automatic pick and the --confirm-uniform fastest candidates applied to
   every layer, interleaved over --confirm-rounds rounds, the fastest that passes everywhere kept. Last, the kept
   plan against the automatic pick, measured afresh (the confirmation chose from its own numbers): --repeats
   rounds, each timing both, the order alternating; ratio = plan / automatic (medians, and per-round ratios with
   their spread).
2. The full attention sweep: ``fluxlab.compare_attention()`` with its defaults (every backend that runs here x the
   FLUX shapes, float64 reference, yardstick, error maps), wall time and where it goes (float64 reference,
   yardstick, kernels incl. timing repeats, error numbers/maps), each summed with CUDA syncs.
Writes decide_gpu.json, decide_gpu.md and autotune_plan_<size>.json to --out (card, versions, command inside).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fluxlab.util import synchronize

EXACT_CANDIDATES = ("fa4", "sdpa_cudnn", "sdpa_flash", "flex", "aiter_triton")
TINY_CANDIDATES = ("sdpa", "sdpa_math", "flex")


def step_ms(transformer, inputs, device, repeats: int) -> list[float]:
    from fluxlab.parallel.model import run_transformer
    from fluxlab.util import time_calls

    return time_calls(lambda: run_transformer(transformer, inputs), warmup=0, repeats=repeats,
                      device=device).times_ms


def plan_against_automatic(transformer, inputs, device, schedule, rounds: int) -> dict:
    """The plan's step against the automatic pick's: one warm-up each, then ``rounds`` rounds timing both, the order
    alternating (automatic first in even rounds), so drift of clocks and temperature hits both alike."""
    import fluxlab

    variants = {"automatic": None, "plan": schedule}
    for name in variants:
        fluxlab.set_schedule(transformer, variants[name])
        step_ms(transformer, inputs, device, 1)
    times = {"automatic": [], "plan": []}
    for r in range(rounds):
        for name in (("automatic", "plan") if r % 2 == 0 else ("plan", "automatic")):
            fluxlab.set_schedule(transformer, variants[name])
            times[name] += step_ms(transformer, inputs, device, 1)
    fluxlab.set_schedule(transformer, None)
    ratios = [p / a for p, a in zip(times["plan"], times["automatic"])]
    auto_med, plan_med = statistics.median(times["automatic"]), statistics.median(times["plan"])
    return {"automatic_step_ms": times["automatic"], "plan_step_ms": times["plan"],
            "automatic_median_ms": auto_med, "plan_median_ms": plan_med, "plan_over_automatic": plan_med / auto_med,
            "automatic_spread_ms": [min(times["automatic"]), max(times["automatic"])],
            "plan_spread_ms": [min(times["plan"]), max(times["plan"])],
            "paired_ratios": ratios, "paired_ratio_median": statistics.median(ratios),
            "paired_ratio_spread": [min(ratios), max(ratios)], "rounds": rounds}


def _counts(choices: dict) -> dict:
    counts = {}
    for backend in choices.values():
        counts[backend] = counts.get(backend, 0) + 1
    return counts


def autotune_at(transformer, size: int, device, candidates, repeats: int, out: Path, tiny: bool,
                confirm_rounds: int = 5, confirm_uniform: int = 2) -> dict:
    import fluxlab
    from fluxlab.decide import autotune_records, confirm_plan
    from fluxlab.parallel.model import run_transformer, transformer_inputs

    inputs = transformer_inputs(transformer, height=size, width=size, device=device,
                                text_tokens=32 if tiny else 512)
    runnable = [c for c in candidates if any(s.name == c and s.available for s in fluxlab.backends())]
    skipped = {c: "not available here (fluxlab doctor says why)" for c in candidates if c not in runnable}
    fluxlab.set_schedule(transformer, None)
    fluxlab.set_backend(transformer, None)
    start = time.perf_counter()
    with fluxlab.capture(transformer, to=device) as cap:  # the bare transformer: every call has step None
        run_transformer(transformer, inputs)
    plan = autotune_records(cap.records, candidates=runnable, repeats=5, progress=True,
                            settings={"size": size, "model": "tiny" if tiny else "[dev]-size random bf16"})
    tune_s = time.perf_counter() - start
    del cap
    start = time.perf_counter()
    confirmation = confirm_plan(plan, transformer, lambda: run_transformer(transformer, inputs), rounds=confirm_rounds,
                                uniform=confirm_uniform)
    confirm_s = time.perf_counter() - start
    plan.save(out / f"autotune_plan_{size}.json")
    same = all(plan.choices.get(layer, auto) == auto for layer, auto in plan.automatic.items())
    return {"size": size, "candidates": runnable, "skipped": skipped, "tune_s": tune_s, "confirm_s": confirm_s,
            "automatic_pick": sorted(set(plan.automatic.values())), "choices": _counts(plan.choices),
            "per_layer_choices": _counts(confirmation.per_layer_choices), "kept": confirmation.kept,
            "decision": confirmation.decision, "plan_runs_the_automatic_kernels": same,
            "layers_without_a_passing_candidate": [l for l in plan.automatic if l not in plan.choices],
            "reasons": plan.reasons, "confirmation": confirmation.as_dict(),
            "confirmation_markdown": confirmation.to_markdown(),
            **plan_against_automatic(transformer, inputs, device, plan.schedule, repeats)}


def sweep_wall_time(device, tiny: bool) -> dict:
    """compare_attention's defaults, timed as a whole and by part (monkeypatched timers, CUDA-synced)."""
    from fluxlab.compare import attention as sweep
    from fluxlab.compare.inputs import SMOKE_INPUTS

    parts = {"float64 reference": 0.0, "yardstick (sdpa math in dtype)": 0.0, "kernels incl. timing repeats": 0.0,
             "error numbers and maps": 0.0}
    originals = {}

    def timed(module, name, part):
        original = getattr(module, name)
        originals[(module, name)] = original

        def wrapper(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(device)
                parts[part] += time.perf_counter() - start

        setattr(module, name, wrapper)

    timed(sweep, "reference_attention", "float64 reference")
    timed(sweep, "baseline_attention", "yardstick (sdpa math in dtype)")
    timed(sweep, "time_calls", "kernels incl. timing repeats")
    timed(sweep, "error_stats", "error numbers and maps")
    timed(sweep, "error_map", "error numbers and maps")
    try:
        synchronize(device)
        start = time.perf_counter()
        report = sweep.compare_attention(SMOKE_INPUTS if tiny else None, device=device, progress=True)
        synchronize(device)
        wall = time.perf_counter() - start
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)
    rows = report.rows
    other = wall - sum(parts.values())
    parts["other (input generation, bookkeeping)"] = other
    return {"wall_s": wall, "parts_s": parts, "dominant": max(parts, key=parts.get), "rows": len(rows),
            "backends": report.meta["backends"], "inputs": sorted({r.input for r in rows}),
            "verdicts": report.verdicts if hasattr(report, "verdicts") else None,
            "target_s": 30}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# Issue 14 on {env.get('card', 'CPU')}", "", f"Command: `{env['command']}`; torch {env['torch']}, "
             f"fluxlab {env['fluxlab']}, git {env.get('git')}.", "", "## Autotune vs the automatic pick", "",
             "Per layer in isolation first, then confirmed on the whole step (tables below); the kept plan against "
             "the automatic pick measured afresh: rounds timing both, order alternating; times are medians [min, max] "
             "in ms; paired ratio: median [min, max] over rounds of plan / automatic in the same round.", "",
             "| size | candidates | automatic pick | per layer in isolation | kept after the step check (layers) | "
             "automatic step | plan step | plan / automatic (medians) | paired ratio | rounds | tune + check (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["autotune"]:
        kept = ", ".join(f"{b} x{n}" for b, n in r["choices"].items())
        lines.append(f"| {r['size']}^2 | {', '.join(r['candidates'])} | {', '.join(r['automatic_pick'])} | "
                     f"{', '.join(f'{b} x{n}' for b, n in r['per_layer_choices'].items())} | {r['kept']}: {kept} | "
                     f"{r['automatic_median_ms']:.2f} {_span(r['automatic_spread_ms'])} | "
                     f"{r['plan_median_ms']:.2f} {_span(r['plan_spread_ms'])} | {r['plan_over_automatic']:.4f} | "
                     f"{r['paired_ratio_median']:.4f} {_span(r['paired_ratio_spread'], '.4f')} | {r['rounds']} | "
                     f"{r['tune_s']:.1f} + {r['confirm_s']:.1f} |")
    for r in results["autotune"]:
        lines += ["", f"### Step-level confirmation at {r['size']}^2", "", r["confirmation_markdown"].rstrip("\n")]
    if "sweep" not in results:
        return "\n".join(lines) + "\n"
    s = results["sweep"]
    lines += ["", "## Full attention sweep (compare_attention defaults)", "",
              f"Wall time {s['wall_s']:.1f} s (target < {s['target_s']} s) for {s['rows']} rows: "
              f"{', '.join(s['backends'])} x {len(s['inputs'])} inputs. Dominant: **{s['dominant']}**.", "",
              "| part | seconds | share |", "|---|---|---|"]
    for part, seconds in s["parts_s"].items():
        lines.append(f"| {part} | {seconds:.2f} | {seconds / s['wall_s']:.0%} |")
    return "\n".join(lines) + "\n"


def _span(pair, spec: str = ".2f") -> str:
    return f"[{pair[0]:{spec}}, {pair[1]:{spec}}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true", help="the tiny transformer on CPU (a dry run of the code)")
    parser.add_argument("--sizes", default=None, help="comma-separated image sides (default 1024; tiny 128)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="rounds of the kept plan against the automatic pick (each round times both)")
    parser.add_argument("--confirm-rounds", type=int, default=5, help="rounds of the step-level confirmation")
    parser.add_argument("--confirm-uniform", type=int, default=2,
                        help="candidates applied to every layer in the confirmation (the fastest by summed "
                             "per-layer time)")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args(argv)

    import fluxlab
    from fluxlab.decide.files import write_atomic, write_json
    from fluxlab.models.tiny import random_transformer
    from fluxlab.parallel.model import TRANSFORMER_CONFIGS

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flux2_step import environment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        device, sizes, candidates = torch.device("cpu"), [128], TINY_CANDIDATES
        config, dtype = TRANSFORMER_CONFIGS["tiny"], torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run this on the GPU machine, or pass --tiny for a CPU dry run")
        device, sizes, candidates = torch.device("cuda"), [1024], EXACT_CANDIDATES
        config, dtype = TRANSFORMER_CONFIGS["dev"], torch.bfloat16
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    results = {"environment": environment(device), "autotune": []}
    start = time.perf_counter()
    transformer = random_transformer(dict(config), device=device, dtype=dtype, seed=0)
    fluxlab.attach(transformer, allowed=fluxlab.models.FLUX2_BACKENDS)
    results["build_s"] = time.perf_counter() - start
    for size in sizes:
        results["autotune"].append(autotune_at(transformer, size, device, candidates, args.repeats, out, args.tiny,
                                               args.confirm_rounds, args.confirm_uniform))
        write_json(out / "decide_gpu.json", results)  # what is done survives a later failure
        write_atomic(out / "decide_gpu.md", markdown(results))
    fluxlab.detach(transformer)
    del transformer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_sweep:
        results["sweep"] = sweep_wall_time(device, args.tiny)
    write_json(out / "decide_gpu.json", results)
    write_atomic(out / "decide_gpu.md", markdown(results))
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
