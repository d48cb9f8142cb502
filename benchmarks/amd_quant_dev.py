"""On a GPU: how far each aiter MHA v4 format (emulated) moves the [dev]-size FLUX.2 model's final latents.

    python3 benchmarks/amd_quant_dev.py --out $OUT/amd_quant_dev            # one H100/H200, about 3 minutes
    python3 benchmarks/amd_quant_dev.py --tiny --out /tmp/amd_quant_dev     # DRY RUN on CPU (tiny, head_dim 128)

The random-weight FLUX.2 [dev] transformer (diffusers' default config: 8 + 48 blocks, 48 heads x 128, bf16,
batch 1) at 1024² (512 text + 4096 image tokens), fluxlab attached, runs a short Euler flow-matching loop
(``frontier_gpu.denoise``: FLUX.2's FlowMatchEulerDiscreteScheduler and the timesteps Flux2Pipeline computes,
seeded random latents and prompt embeddings, guidance 4) once per kernel:

- the exact kernel (``sdpa_cudnn``) everywhere: the yardstick;
- a second exact kernel (``sdpa_flash``) everywhere: the spread two exact kernels already have after the loop;
- aiter's bf16 kernel, emulated (``emu_aiter``, ``how_v3_bf16_cvt=1``, aiter's default; ``--rounding`` adds 0 and
  2, xDiT's choice): what an MI355X user runs without quantisation;
- each MHA v4 format, emulated (``emu_aiter_quant:format=F``, bit-faithful quantisers; the kernel's accumulation
  as docs/amd_quant.md states its assumptions). FLUX.2 [dev] has head_dim 128: no padding.

Per kernel: the final latents' rel-L2 against the exact kernel's (and against ``emu_aiter``'s), the drift after
every step, and that number over the exact-kernel spread. Random weights draw no picture: this measures how each
format's numerics compound through 56 blocks and T steps. The emulators' wall time is recorded only as the run's
cost (an emulator in float32 on an NVIDIA GPU says nothing about aiter's kernel speed on an MI355X).
A kernel whose loop would pass ``--budget-s`` (estimated from the slowest emulated run so far) is skipped and
said so. Writes amd_quant_dev.json and amd_quant_dev.md to --out after every kernel (``complete`` says whether
the run finished).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux2_step import build_transformer, environment, step_inputs  # noqa: E402
from frontier_gpu import GUIDANCE, AtStep, Clock, denoise  # noqa: E402

FORMATS = ["i8fp8", "fp8", "mxfp6", "mxfp4", "f6f4", "f4f4"]
GPU_KERNELS = {"exact": "sdpa_cudnn", "spread": "sdpa_flash"}
DRY_RUN_KERNELS = {"exact": "sdpa", "spread": "sdpa_math"}  # no cuDNN and no flash kernel on a CPU
SIZE, STEPS, TEXT_TOKENS = 1024, 8, 512
# The dry run's transformer: the tiny [dev]-architecture config with MHA v4's head_dim 128 (2 heads), so the
# emulators run on the model's own q/k/v exactly as on the [dev]-size model (no padding).
TINY_OVERRIDES = {"attention_head_dim": 128, "num_attention_heads": 2, "axes_dims_rope": (32, 32, 32, 32)}


def plan(kernels: dict, rounding: bool, formats: list[str]) -> list[dict]:
    """The runs, in order: exact, spread, the formats, then the bf16 kernel (and its other roundings): what the
    budget cuts first is the last."""
    modes = (1, 0, 2) if rounding else (1,)
    runs = [{"name": kernels["exact"], "kind": "exact"}, {"name": kernels["spread"], "kind": "exact spread"}]
    runs += [{"name": f"emu_aiter_quant:format={f}", "kind": "MHA v4 format (emulated)", "format": f}
             for f in formats]
    runs += [{"name": f"emu_aiter:how_v3_bf16_cvt={m}", "kind": "bf16 kernel (emulated)"} for m in modes]
    return runs


def build(args, kernels: dict, device):
    import fluxlab
    from fluxlab.models.tiny import TINY_CONFIGS

    config = {**TINY_CONFIGS["dev"]["transformer"], **TINY_OVERRIDES} if args.tiny else {}
    start = time.perf_counter()
    transformer = build_transformer(config, device, torch.bfloat16, seed=0)
    full = dict(transformer.config)
    fluxlab.attach(transformer, allowed=fluxlab.models.FLUX2_BACKENDS | set(kernels.values())
                   | {"emu_aiter", "emu_aiter_quant"})
    inputs = step_inputs(full, args.size, device, torch.bfloat16, text_tokens=args.text_tokens, seed=0)
    if "guidance" in inputs:
        inputs["guidance"] = torch.full((1,), GUIDANCE, device=device, dtype=torch.float32)  # as Flux2Pipeline
    model = {"config": "tiny [dev]-architecture config, head_dim 128 (DRY RUN)" if args.tiny else
             "FLUX.2 [dev] (diffusers' Flux2Transformer2DModel defaults)",
             "params": sum(p.numel() for p in transformer.parameters()), "layers": full["num_layers"],
             "single_layers": full["num_single_layers"], "heads": full["num_attention_heads"],
             "head_dim": full["attention_head_dim"], "dtype": "bfloat16", "weights": "random (seed 0)",
             "build_s": time.perf_counter() - start}
    return transformer, inputs, model


def run_kernel(transformer, inputs, name: str, steps: int, device) -> dict:
    """The whole loop with ``name`` everywhere: latents after each step, the kernel every step really ran."""
    from fluxlab import Schedule

    at_step = AtStep(Schedule(default=name), steps)
    start = time.perf_counter()
    latents, _ = denoise(transformer, inputs, steps, at_step, device)
    return {"latents": latents, "wall_s": time.perf_counter() - start,
            "kernels": [at_step.kernel_of_step(i) for i in range(steps)]}


def summarise(results: dict, finals: dict, per_step: dict) -> None:
    from fluxlab.util import rel_l2

    kernels, rows = results["kernels"], results["rows"]
    exact, bf16 = finals.get(kernels["exact"]), finals.get("emu_aiter:how_v3_bf16_cvt=1")
    spread = None
    if exact is not None and kernels["spread"] in finals:
        spread = rel_l2(finals[kernels["spread"]], exact)
    results["spread"] = {"kernel": kernels["spread"], "against": kernels["exact"], "final_latent_rel_l2": spread}
    for row in rows:
        final = finals.get(row["name"])
        if final is None or exact is None:
            continue
        row["final_latent_rel_l2"] = rel_l2(final, exact)
        row["finite"] = bool(torch.isfinite(final).all())
        row["over_exact_spread"] = row["final_latent_rel_l2"] / spread if spread else None
        if bf16 is not None:
            row["final_latent_rel_l2_vs_emu_aiter"] = rel_l2(final, bf16)
        if row["name"] != kernels["exact"] and row["name"] in per_step and kernels["exact"] in per_step:
            row["per_step_rel_l2"] = [rel_l2(a, b) for a, b in zip(per_step[row["name"]], per_step[kernels["exact"]])]


def markdown(results: dict) -> str:
    env, kernels = results["environment"], results["kernels"]
    lines = ["# aiter MHA v4 formats (emulated) on the [dev]-size FLUX.2 model: final-latent drift", ""]
    if results["dry_run"]:
        lines += [f"**DRY RUN** on CPU with a tiny config: `{kernels['exact']}` stands in for sdpa_cudnn, "
                  f"`{kernels['spread']}` for sdpa_flash. Not a measurement of FLUX.2 [dev].", ""]
    model = results.get("model") or {}
    lines += [f"{env.get('card', 'CPU')}; torch {env['torch']}, diffusers {env['diffusers']}; {env['date']}; git "
              f"{(env.get('git') or {}).get('commit')}. Command: `{env['command']}`. "
              f"{'Complete.' if results['complete'] else '**Incomplete run** (what is here was measured).'}", ""]
    if model:
        spread = results.get("spread") or {}
        lines += [f"{model['config']}: {model['params'] / 1e6:,.1f} M random bf16 weights, {model['layers']} + "
                  f"{model['single_layers']} blocks, {model['heads']} heads x {model['head_dim']}; "
                  f"{results['size']}², {results['text_tokens']} text + {results['image_tokens']} image tokens, "
                  f"{results['steps']} Euler steps. Drift: final latents against `{kernels['exact']}` everywhere. "
                  f"Exact-kernel spread (`{spread.get('kernel')}` vs `{spread.get('against')}`): "
                  f"{_fmt(spread.get('final_latent_rel_l2'), '.3g')}. Random weights draw no picture. Wall time "
                  "is the run's cost (emulators in float32), not a kernel speed.", "",
                  "| kernel | kind | final-latent rel-L2 | x exact spread | vs emu_aiter (bf16) | finite | wall (s) | "
                  "note |", "|---|---|---:|---:|---:|---|---:|---|"]
        for r in results["rows"]:
            lines.append(f"| {r['name']} | {r['kind']} | {_fmt(r.get('final_latent_rel_l2'), '.3g')} | "
                         f"{_fmt(r.get('over_exact_spread'), '.1f')} | "
                         f"{_fmt(r.get('final_latent_rel_l2_vs_emu_aiter'), '.3g')} | {r.get('finite', '')} | "
                         f"{_fmt(r.get('wall_s'), '.1f')} | {r.get('error') or r.get('skipped') or ''} |")
    lines += [f"- {note}" for note in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def _fmt(value, spec) -> str:
    return "–" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for amd_quant_dev.json and .md")
    parser.add_argument("--tiny", action="store_true", help="DRY RUN on CPU: tiny head_dim-128 config, sdpa and "
                        "sdpa_math stand in for sdpa_cudnn and sdpa_flash")
    parser.add_argument("--steps", type=int, default=None, help=f"Euler steps (default {STEPS}; --tiny 3)")
    parser.add_argument("--size", type=int, default=None, help=f"image side (default {SIZE}; --tiny 64)")
    parser.add_argument("--text-tokens", type=int, default=None, help=f"default {TEXT_TOKENS}; --tiny 16")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rounding", action="store_true",
                        help="also how_v3_bf16_cvt=0 and 2 (two more emulated runs)")
    parser.add_argument("--budget-s", type=float, default=170.0,
                        help="seconds: a run starts only if it should end by then (estimated from the slowest so far)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else STEPS)
    args.size = args.size or (64 if args.tiny else SIZE)
    args.text_tokens = args.text_tokens or (16 if args.tiny else TEXT_TOKENS)
    formats = args.formats.split(",")
    if sorted(set(formats) - set(FORMATS)):
        parser.error(f"unknown format(s) {sorted(set(formats) - set(FORMATS))}; choose from {FORMATS}")
    if args.size % 16 or args.steps < 1:
        parser.error("--size must be a multiple of 16 and --steps at least 1")
    if args.tiny:
        device, kernels = torch.device("cpu"), dict(DRY_RUN_KERNELS)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run this on the GPU machine, or pass --tiny for a CPU dry run")
        device, kernels = torch.device("cuda"), dict(GPU_KERNELS)

    import fluxlab
    from fluxlab.decide.files import write_atomic, write_json

    clock = Clock(args.budget_s)
    out = Path(args.out)
    runs = plan(kernels, args.rounding, formats)
    results = {"dry_run": args.tiny, "complete": False, "environment": environment(device), "kernels": kernels,
               "stands_in_for": {v: GPU_KERNELS[k] for k, v in kernels.items()} if args.tiny else None,
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "size": args.size,
               "text_tokens": args.text_tokens, "image_tokens": (args.size // 16) ** 2, "steps": args.steps,
               "rows": [{k: v for k, v in r.items()} for r in runs], "notes": []}

    def checkpoint():
        write_json(out / "amd_quant_dev.json", results)
        write_atomic(out / "amd_quant_dev.md", markdown(results))

    finals, per_step, slowest = {}, {}, 0.0
    status = 0
    try:
        transformer, inputs, results["model"] = build(args, kernels, device)
        for row in results["rows"]:
            if slowest and not clock.fits(1.15 * slowest):
                row["skipped"] = (f"skipped: about {slowest:.0f} s would pass the {clock.budget_s:.0f} s budget "
                                  f"({clock.elapsed:.0f} s used)")
                continue
            try:
                run = run_kernel(transformer, inputs, row["name"], args.steps, device)
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot run is a row with its error
                row["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                continue
            row["wall_s"], row["kernels"] = run["wall_s"], run["kernels"]
            slowest = max(slowest, run["wall_s"])
            finals[row["name"]], per_step[row["name"]] = run["latents"][-1], run["latents"]
            summarise(results, finals, per_step)
            checkpoint()
        fluxlab.detach(transformer)
        results["complete"] = not any(r.get("error") or r.get("skipped") for r in results["rows"])
    except Exception:  # noqa: BLE001 - what was measured is written, marked incomplete
        traceback.print_exc()
        status = 1
    results["wall_s"] = clock.elapsed
    checkpoint()
    print(markdown(results))
    return status


if __name__ == "__main__":
    sys.exit(main())
