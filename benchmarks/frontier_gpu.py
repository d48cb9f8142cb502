"""Issue 14 on a GPU: what `sage` with exact `fa4` ends (k = 0..3) buys in step time and costs in fidelity at 1024².

    python3 benchmarks/frontier_gpu.py --out $OUT/frontier          # one H100/H200, under 5 minutes
    python3 benchmarks/frontier_gpu.py --tiny --out /tmp/frontier   # DRY RUN on CPU (tiny config, stand-in kernels)

Schedules: `fa4` everywhere, and ``Schedule.exact_ends("fa4", "sage", first=k, last=k)`` for k = 0..3 (k = 0 is
`sage` everywhere) over T = 28 denoising steps, as [dev] runs by default.

- **Step time** ([dev]-size model): the random-weight FLUX.2 [dev] transformer (diffusers' default config, bf16,
  batch 1) at 1024² (512 text + 4096 image tokens), fluxlab attached. Each schedule runs as the real sequence of
  T transformer calls of an Euler flow-matching loop (below), each call synchronised and timed; a schedule's step
  time is its run's mean, median over rounds, rounds interleaved across schedules after a warm-up of every kernel
  (JIT compilation). The per-kernel step times predict each schedule's mean; the prediction is reported beside the
  measurement as a check of the timing.
- **Fidelity (b), [dev]-size model**: the same loop's final latents under each schedule against `fa4` everywhere
  (rel-L2), beside the spread between two exact kernels (`sdpa_cudnn` against `fa4`). The loop is diffusers'
  ``FlowMatchEulerDiscreteScheduler`` with FLUX.2's config and the timesteps ``Flux2Pipeline`` computes (sigmas
  linspace(1, 1/T, T), ``compute_empirical_mu``), seeded random initial latents and random prompt embeddings,
  guidance 4. Random weights draw no picture: this measures how the kernels' numerics compound through 56 blocks
  and T steps, not image quality.
- **Fidelity (a), embedded model**: fluxlab's trained tiny FLUX.2 model on the GPU (bf16) through the public
  ``fluxlab.frontier`` (exact `fa4`, candidate `sage`, the same k, T steps, 2 seeds): final-latent rel-L2, SSIM,
  PSNR and the image verdicts of real pictures. sage 1.0.6 takes head_dim 64/96/128 only and the embedded model
  has 32, so there `sage` runs on q/k/v zero-padded to 64 (``padded_backend``; zero columns change neither Q·Kᵀ
  nor sage's int8 block scales nor its K smoothing, and the output's padded columns are dropped).

The Pareto set (``fluxlab.decide.frontier.mark_pareto``) is marked twice: [dev] step time against each fidelity.
Writes frontier_gpu.json, frontier_gpu.md and frontier_gpu.png to --out (card, versions, command, git inside),
after every phase, so a run cut short keeps what it measured (``complete`` says whether it finished).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux2_step import build_transformer, environment, step_inputs  # noqa: E402

KS = (0, 1, 2, 3)
STEPS = 28  # FLUX.2 [dev]'s default number of denoising steps
SIZE = 1024
PROMPT = "a red circle at the top left on a blue background"  # the embedded model's kind of caption
GUIDANCE = 4.0  # Flux2Pipeline's default guidance_scale
# The kernels of the GPU run, and what stands in for each in the CPU dry run (no FA4, no sage, no cuDNN on a CPU).
GPU_KERNELS = {"exact": "fa4", "fast": "sage", "spread": "sdpa_cudnn"}
DRY_RUN_KERNELS = {"exact": "sdpa", "fast": "emu_sage", "spread": "sdpa_math"}


class Clock:
    """Seconds since the start, against the run's budget (what does not fit is skipped and said so)."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, seconds: float) -> bool:
        return self.elapsed + seconds <= self.budget_s


# -- schedules and the denoising loop ------------------------------------------------------------------------------


def variants(exact: str, fast: str, steps: int) -> list[dict]:
    """The exact kernel everywhere, then exact ends k = 0..3 (those that leave at least one fast step)."""
    from fluxlab import Schedule
    from fluxlab.decide.frontier import exact_ends_label

    found = [{"name": f"{exact} (exact)", "k": None, "schedule": Schedule(default=exact)}]
    found += [{"name": exact_ends_label(exact, fast, k), "k": k,
               "schedule": Schedule.exact_ends(exact, fast, first=k, last=k)} for k in KS if 2 * k < steps]
    return found


class AtStep:
    """A schedule function for a bare transformer: answers ``schedule`` at the step the loop sets (fluxlab reads
    steps from a pipeline; this loop has none), and counts its answers per step (what each step ran)."""

    def __init__(self, schedule, num_steps: int):
        self.schedule, self.num_steps, self.step = schedule, num_steps, 0
        self.answers: dict[int, dict[str, int]] = {}

    def __call__(self, layer, step, num_steps):
        answer = self.schedule(layer, self.step, self.num_steps)
        counts = self.answers.setdefault(self.step, {})
        counts[answer] = counts.get(answer, 0) + 1
        return answer

    def kernel_of_step(self, step: int) -> str | None:
        """The one kernel every layer used at ``step`` (None if they differed)."""
        used = self.answers.get(step, {})
        return next(iter(used)) if len(used) == 1 else None


def flux2_scheduler(steps: int, image_tokens: int, device):
    """FLUX.2's FlowMatchEulerDiscreteScheduler with the timesteps Flux2Pipeline sets for ``steps`` at this size."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    from fluxlab.models.tiny import TINY_CONFIGS

    scheduler = FlowMatchEulerDiscreteScheduler(**TINY_CONFIGS["dev"]["scheduler"])  # FLUX.2's own config
    sigmas = np.linspace(1.0, 1 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, device=device,
                            mu=compute_empirical_mu(image_seq_len=image_tokens, num_steps=steps))
    scheduler.set_begin_index(0)
    return scheduler


def denoise(transformer, inputs: dict, steps: int, at_step: AtStep, device) -> tuple[list[torch.Tensor], list[float]]:
    """Flux2Pipeline's Euler loop over the bare transformer: latents after each step (CPU float32) and each
    transformer call's milliseconds (synchronised before and after)."""
    import fluxlab

    from fluxlab.util import synchronize

    def sync():
        synchronize(device)

    latents = inputs["hidden_states"]
    scheduler = flux2_scheduler(steps, latents.shape[1], device)
    fluxlab.set_schedule(transformer, at_step)
    after, times_ms = [], []
    try:
        with torch.inference_mode():
            for i, t in enumerate(scheduler.timesteps):
                at_step.step = i
                kwargs = {**inputs, "hidden_states": latents, "timestep": t.expand(1).to(latents.dtype) / 1000}
                sync()
                start = time.perf_counter()
                velocity = transformer(**kwargs)[0]
                sync()
                times_ms.append((time.perf_counter() - start) * 1e3)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                after.append(latents.float().cpu())
    finally:
        fluxlab.set_schedule(transformer, None)
    return after, times_ms


# -- the [dev]-size model: step time and final-latent fidelity -----------------------------------------------------


def warm_up(transformer, inputs, kernels: list[str], device) -> dict:
    """Two calls per kernel (JIT compilation, autotuning), the first watched: which kernel really ran."""
    import fluxlab
    from fluxlab import Schedule
    from fluxlab.util import synchronize

    ran = {}
    for name in kernels:
        try:
            fluxlab.set_schedule(transformer, Schedule(default=name))
            with torch.inference_mode():
                with fluxlab.capture(transformer, to="meta", lse=False) as watched:
                    transformer(**inputs)
                ran[name] = watched.backends_used()
                transformer(**inputs)
            synchronize(device)
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot run here is a row with its error
            ran[name] = {"error": _error(exc)}
        finally:
            fluxlab.set_schedule(transformer, None)
    return ran


def run_variant(transformer, inputs, variant: dict, steps: int, device) -> dict:
    at_step = AtStep(variant["schedule"], steps)
    latents, times = denoise(transformer, inputs, steps, at_step, device)
    kernels = [at_step.kernel_of_step(i) for i in range(steps)]
    return {"latents": latents, "step_ms": times, "kernels": kernels}


def build_dev(args, kernels: dict, device):
    """The [dev]-size random-weight transformer with fluxlab attached, its step inputs, and the result entry."""
    import fluxlab

    if args.tiny:
        from fluxlab.models.tiny import TINY_CONFIGS

        config = dict(TINY_CONFIGS["dev"]["transformer"])  # the tiny [dev]-architecture config
    else:
        config = {}  # diffusers' defaults are FLUX.2 [dev]: 8 + 48 blocks, 48 heads x 128
    dtype = torch.bfloat16
    start = time.perf_counter()
    transformer = build_transformer(config, device, dtype, seed=0)
    full = dict(transformer.config)
    fluxlab.attach(transformer, allowed=fluxlab.models.FLUX2_BACKENDS | set(kernels.values()))
    inputs = step_inputs(full, args.size, device, dtype, text_tokens=args.text_tokens, seed=0)
    if "guidance" in inputs:
        inputs["guidance"] = torch.full((1,), GUIDANCE, device=device, dtype=torch.float32)  # as Flux2Pipeline
    dev = {
        "model": {"config": "tiny [dev]-architecture config (DRY RUN)" if args.tiny else
                  "FLUX.2 [dev] (diffusers' Flux2Transformer2DModel defaults)",
                  "params": sum(p.numel() for p in transformer.parameters()), "layers": full["num_layers"],
                  "single_layers": full["num_single_layers"], "heads": full["num_attention_heads"],
                  "head_dim": full["attention_head_dim"], "dtype": "bfloat16", "weights": "random (seed 0)",
                  "build_s": time.perf_counter() - start},
        "compiled": args.compile or "eager",
        "size": args.size, "text_tokens": args.text_tokens, "image_tokens": (args.size // 16) ** 2, "steps": args.steps,
        "loop": ("diffusers FlowMatchEulerDiscreteScheduler (FLUX.2 config), sigmas linspace(1, 1/T, T) with "
                 "compute_empirical_mu as Flux2Pipeline; seeded random initial latents and prompt embeddings, "
                 f"guidance {GUIDANCE}; latents bf16 between steps as in the pipeline"),
        "rows": [], "spread": None, "rounds_done": 0, "notes": []}
    return transformer, inputs, dev


def dev_phase(args, kernels: dict, device, clock: Clock, results: dict, checkpoint, between) -> None:
    """Build and warm up the [dev]-size transformer; round 1 (timing + fidelity), the exact-kernel spread,
    ``between()`` (the embedded phase), then more timing rounds while the budget lasts. Fills ``results["dev"]``."""
    import fluxlab

    from fluxlab import Schedule

    transformer, inputs, dev = build_dev(args, kernels, device)
    results["dev"] = dev
    plan = variants(kernels["exact"], kernels["fast"], args.steps)
    skipped_ks = [k for k in KS if 2 * k >= args.steps]
    if skipped_ks:
        dev["notes"].append(f"k = {skipped_ks} left out: {args.steps} steps leave no fast step in between")
    warm_start = time.perf_counter()
    used = [kernels["exact"], kernels["fast"], kernels["spread"]]
    dev["warmup_ran"] = warm_up(transformer, inputs, used, device)  # eager: watched, so it shows what really ran
    if args.compile:  # diffusers' regional compile; every kernel's graphs compile here, none while timed
        from torch._dynamo.utils import counters

        compile_start = time.perf_counter()
        transformer.compile_repeated_blocks(fullgraph=True, backend=args.compile)
        for name in used:
            for _ in range(2):
                fluxlab.set_schedule(transformer, Schedule(default=name))
                with torch.inference_mode():
                    transformer(**inputs)
        fluxlab.set_schedule(transformer, None)
        results["phases_s"]["compile"] = time.perf_counter() - compile_start
        dev["graphs_compiled"] = counters["stats"]["unique_graphs"]
        dev["graph_breaks"] = sum(counters["graph_break"].values())
    results["phases_s"]["build"] = dev["model"]["build_s"]
    results["phases_s"]["warm-up"] = time.perf_counter() - warm_start
    rows = {v["name"]: {"name": v["name"], "k": v["k"], "schedule": _describe(v["schedule"]), "runs_step_ms": [],
                        "per_step_ms": [], "kernels": None, "error": None} for v in plan}
    dev["rows"] = list(rows.values())
    finals: dict = {}  # round 1's latents after every step, per schedule
    round_s = None
    for round_index in range(args.rounds):
        if round_s is not None and not clock.fits(1.1 * round_s):  # 10 % margin: the machine's limit is hard
            dev["notes"].append(f"round {round_index + 1} of {args.rounds} skipped: {round_s:.0f} s would pass the "
                                f"{clock.budget_s:.0f} s budget ({clock.elapsed:.0f} s used)")
            break
        round_start = time.perf_counter()
        order = plan if round_index % 2 == 0 else [plan[0], *reversed(plan[1:])]  # interleaved, exact first
        run_round(transformer, inputs, order, rows, round_index, args.steps, device, finals)
        dev["rounds_done"] = round_index + 1
        round_s = time.perf_counter() - round_start
        if round_index == 0:
            results["phases_s"]["round 1"] = round_s
            start = time.perf_counter()
            dev["spread"] = spread_run(transformer, inputs, kernels, args.steps, device, finals, dev["rows"])
            results["phases_s"]["exact spread"] = time.perf_counter() - start
            summarise_dev(dev, kernels)
            checkpoint()
            if args.embedded:
                between()
        else:
            results["phases_s"][f"round {round_index + 1}"] = round_s
        summarise_dev(dev, kernels)
        checkpoint()
    fluxlab.detach(transformer)
    del transformer
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_round(transformer, inputs, order: list[dict], rows: dict, round_index: int, steps: int, device,
              finals: dict) -> None:
    """Each schedule once, as its whole denoising loop. Round 1 (exact first) measures fidelity; later rounds
    only time, and check that the final latents repeat."""
    from fluxlab.util import rel_l2

    exact_name = order[0]["name"]
    for variant in order:
        row = rows[variant["name"]]
        if row["error"]:
            continue
        try:
            run = run_variant(transformer, inputs, variant, steps, device)
        except Exception as exc:  # noqa: BLE001 - a schedule that fails is a row with its error
            row["error"] = _error(exc)
            continue
        row["runs_step_ms"].append(statistics.fmean(run["step_ms"]))
        row["per_step_ms"].append(run["step_ms"])
        row["kernels"] = row["kernels"] or _kernel_runs(run["kernels"])
        final = run["latents"][-1]
        row["finite"] = bool(torch.isfinite(final).all())
        if round_index > 0:
            row.setdefault("repeat_rel_l2", []).append(rel_l2(final, finals[variant["name"]][-1]))
            continue
        finals[variant["name"]] = run["latents"]
        if exact_name in finals:
            exact = finals[exact_name]
            row["final_latent_rel_l2"] = rel_l2(final, exact[-1])
            if variant["name"] != exact_name:
                row["per_step_rel_l2_vs_exact"] = [rel_l2(a, b) for a, b in zip(run["latents"], exact)]


def spread_run(transformer, inputs, kernels, steps, device, finals: dict, rows: list[dict]) -> dict:
    """The second exact kernel everywhere: how far two exact kernels already land apart after the whole loop (and
    each schedule's final latents against it too)."""
    from fluxlab import Schedule
    from fluxlab.util import rel_l2

    name = kernels["spread"]
    entry = {"kernel": name}
    try:
        run = run_variant(transformer, inputs, {"schedule": Schedule(default=name)}, steps, device)
    except Exception as exc:  # noqa: BLE001 - without it there is no spread to compare with; the run goes on
        entry["error"] = _error(exc)
        return entry
    entry["step_ms"] = statistics.fmean(run["step_ms"])
    entry["kernels"] = _kernel_runs(run["kernels"])
    final = run["latents"][-1]
    if rows[0]["name"] in finals:
        entry["final_latent_rel_l2"] = rel_l2(final, finals[rows[0]["name"]][-1])
    for row in rows:
        if row["name"] in finals:
            row[f"final_latent_rel_l2_vs_{name}"] = rel_l2(finals[row["name"]][-1], final)
    return entry


def summarise_dev(dev: dict, kernels: dict) -> None:
    """Medians, speed-ups against the exact kernel, the per-kernel timing model and its check, Pareto marks."""
    from fluxlab.decide.frontier import FrontierRow, mark_pareto

    rows = dev["rows"]
    pooled: dict[str, list[float]] = {}
    for row in rows:
        if row["runs_step_ms"]:
            row["step_ms"] = statistics.median(row["runs_step_ms"])
            for times in row["per_step_ms"]:
                for kernel, ms in zip(_expand(row["kernels"]), times):
                    pooled.setdefault(kernel, []).append(ms)
    dev["kernel_step_ms"] = {k: statistics.median(v) for k, v in pooled.items()}
    exact_ms = rows[0].get("step_ms")
    spread = (dev.get("spread") or {}).get("final_latent_rel_l2")
    for row in rows:
        if "step_ms" not in row:
            continue
        row["speedup_vs_exact"] = exact_ms / row["step_ms"] if exact_ms else None
        kernels_used = _expand(row["kernels"])
        if kernels_used and all(k in dev["kernel_step_ms"] for k in kernels_used):
            row["predicted_step_ms"] = statistics.fmean(dev["kernel_step_ms"][k] for k in kernels_used)
            row["prediction_error"] = row["predicted_step_ms"] / row["step_ms"] - 1
        if spread and row.get("final_latent_rel_l2") is not None:
            row["drift_over_exact_spread"] = row["final_latent_rel_l2"] / spread
    frontier_rows = [FrontierRow(r["name"], None, r["schedule"], step_ms=r.get("step_ms", math.nan),
                                 final_latent_rel_l2=_num(r.get("final_latent_rel_l2")), error=r["error"])
                     for r in rows]
    mark_pareto(frontier_rows)
    for row, marked in zip(rows, frontier_rows):
        row["pareto"] = marked.pareto
    checked = [abs(r["prediction_error"]) for r in rows if r.get("prediction_error") is not None]
    dev["timing_model_check"] = {"max_abs_prediction_error": max(checked) if checked else None,
                                 "rows_checked": len(checked)}


# -- the embedded model: image fidelity through fluxlab.frontier ---------------------------------------------------


def padded_backend(inner: str, head_dim: int) -> str:
    """``inner`` itself if it takes ``head_dim``; else a registered backend that zero-pads q/k/v to the smallest
    head_dim ``inner`` takes (``fluxlab.registry.register_padded``)."""
    import fluxlab

    caps = fluxlab.registry.get_backend(inner).caps
    supported = caps.head_dims or ((caps.min_head_dim,) if head_dim < caps.min_head_dim else None)
    if supported is None or head_dim in supported:
        return inner
    width = min((d for d in supported if d > head_dim), default=None)
    if width is None:
        raise ValueError(f"{inner} takes head_dim {supported}, none of them above {head_dim}: cannot pad")
    return fluxlab.registry.register_padded(inner, width, name=f"{inner}_padded{width}")


def embedded_phase(args, kernels: dict, device) -> dict:
    """fluxlab.frontier on the embedded model: exact ends k against the exact kernel, 2 seeds, real pictures."""
    import fluxlab
    from fluxlab.decide.frontier import exact_ends_label

    from fluxlab.models.embedded import EMBEDDED_DIR

    start = time.perf_counter()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # sage and fa4 take half precision only
    config = json.loads((EMBEDDED_DIR / "transformer" / "config.json").read_text())
    entry = {"model": (f"fluxlab's embedded FLUX.2 [klein]-architecture model (trained; {config['num_layers']} + "
                       f"{config['num_single_layers']} blocks, {config['num_attention_heads']} heads x "
                       f"{config['attention_head_dim']})"),
             "dtype": str(dtype).removeprefix("torch."), "steps": args.embedded_steps, "seeds": list(args.seeds),
             "prompt": PROMPT}
    try:
        fast = padded_backend(kernels["fast"], head_dim=config["attention_head_dim"])
        entry["fast"] = fast
        pipe = fluxlab.load_flux2("embedded", device=device, dtype=dtype,
                                  allowed=fluxlab.models.FLUX2_BACKENDS | set(kernels.values()) | {fast})
    except Exception as exc:  # noqa: BLE001 - recorded; the [dev]-size rounds go on
        entry["error"] = _error(exc)
        return entry
    extra = {"max_sequence_length": args.embedded_text_tokens} if args.embedded_text_tokens else {}
    entry["exact_failures"] = {}
    try:
        for exact in (kernels["exact"], kernels["spread"]):  # the second exact kernel only if the first fails
            try:
                front = fluxlab.frontier(pipe, [fast], exact=exact, prompt=PROMPT, seeds=tuple(args.seeds),
                                         steps=args.embedded_steps, repeats=1, locate=args.locate, **extra)
            except Exception as exc:  # noqa: BLE001
                entry["exact_failures"][exact] = _error(exc)
                continue
            entry["exact"] = exact
            entry["frontier"] = front.as_dict()
            entry["markdown"] = front.to_markdown()
            labels = {f"{exact} (exact)": None, **{exact_ends_label(exact, fast, k): k for k in KS}}
            entry["k_of_row"] = {r.name: labels[r.name] for r in front.rows if r.name in labels}
            break
        else:
            entry["error"] = "the frontier failed with every exact kernel: " + "; ".join(
                f"{k}: {v}" for k, v in entry["exact_failures"].items())
    finally:
        fluxlab.detach(pipe)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    entry["wall_s"] = time.perf_counter() - start
    return entry


def pareto_with_dev_time(results: dict) -> None:
    """The embedded model's fidelity against the [dev]-size step time of the same k: Pareto set marked."""
    from fluxlab.decide.frontier import FrontierRow, mark_pareto

    embedded, dev = results.get("embedded") or {}, results.get("dev") or {}
    if "frontier" not in embedded or not dev.get("rows"):
        return
    dev_by_k = {r["k"]: r for r in dev["rows"]}
    combined = []
    for row in embedded["frontier"]["rows"]:
        k = embedded["k_of_row"].get(row["name"], "no [dev] twin")
        twin = dev_by_k.get(k) if k != "no [dev] twin" else None
        if twin is None or "step_ms" not in twin:
            continue
        combined.append((twin, row, FrontierRow(twin["name"], None, twin["schedule"], step_ms=twin["step_ms"],
                                                final_latent_rel_l2=_num(row["final_latent_rel_l2"]),
                                                error=row["error"])))
    mark_pareto([c[2] for c in combined])
    results["embedded_vs_dev_time"] = [
        {"name": twin["name"], "k": twin["k"], "dev_step_ms": twin["step_ms"], "embedded_row": row["name"],
         "final_latent_rel_l2": row["final_latent_rel_l2"], "ssim": row["ssim"], "psnr": row["psnr"],
         "verdict": row["verdict"], "pareto": marked.pareto} for twin, row, marked in combined]


# -- report --------------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    env, dev, kernels = results["environment"], results.get("dev") or {}, results["kernels"]
    dry = results["dry_run"]
    lines = ["# Frontier: sage with exact fa4 ends on FLUX.2", ""]
    if dry:
        lines += [f"**DRY RUN** on CPU with the tiny config: `{kernels['exact']}` stands in for fa4, "
                  f"`{kernels['fast']}` for sage, `{kernels['spread']}` for sdpa_cudnn. Not a measurement of "
                  "FLUX.2 [dev] or of those kernels.", ""]
    lines += [f"{env.get('card', 'CPU')}; torch {env['torch']}, diffusers {env['diffusers']}, "
              f"FA4 {env['backend_versions'].get('fa4')}, sageattention {env['backend_versions'].get('sage')}; "
              f"{env['date']}; git {(env.get('git') or {}).get('commit')}. Command: `{env['command']}`. "
              f"{'Complete.' if results['complete'] else '**Incomplete run** (what is here was measured).'}", ""]
    if dev.get("rows"):
        model = dev["model"]
        spread = dev.get("spread") or {}
        lines += [f"## Step time and final-latent fidelity: [dev]-size model ({model['config']}, "
                  f"{model['params'] / 1e6:,.1f} M random bf16 weights, {model['layers']} + {model['single_layers']} "
                  f"blocks, {dev['size']}², {dev['text_tokens']} text + {dev['image_tokens']} image tokens)", "",
                  f"{dev['steps']} steps of {dev['loop']}. Step time: mean transformer call of a run, median of "
                  f"{dev['rounds_done']} interleaved round(s). Fidelity: final latents against "
                  f"`{kernels['exact']}` everywhere; random weights draw no picture. Exact-kernel spread: "
                  f"`{spread.get('kernel')}` against `{kernels['exact']}`: "
                  f"{_fmt(spread.get('final_latent_rel_l2'), '.3g')}"
                  f" ({_fmt(spread.get('step_ms'), '.1f')} ms/step). **P**: Pareto set.", "",
                  "| schedule | step (ms) | runs (ms) | predicted (ms) | speed-up (x) | final-latent rel-L2 | × exact "
                  "spread | Pareto | error |", "|---|---|---|---|---|---|---|---|---|"]
        for r in dev["rows"]:
            lines.append(f"| {r['name']} | {_fmt(r.get('step_ms'), '.1f')} | "
                         f"{', '.join(f'{x:.1f}' for x in r['runs_step_ms'])} | "
                         f"{_fmt(r.get('predicted_step_ms'), '.1f')} | "
                         f"{_fmt(r.get('speedup_vs_exact'), '.3f')} | {_fmt(r.get('final_latent_rel_l2'), '.3g')} | "
                         f"{_fmt(r.get('drift_over_exact_spread'), '.2f')} | {'P' if r.get('pareto') else ''} | "
                         f"{r['error'] or ''} |")
        check = dev.get("timing_model_check") or {}
        kernel_ms = ", ".join(f"`{k}` {v:.1f} ms" for k, v in dev.get("kernel_step_ms", {}).items())
        lines += ["", f"Per-kernel step (median over every step run with it): {kernel_ms}. Timing check: the "
                  f"schedules' means predicted from those differ from the measured ones by at most "
                  f"{_fmt(check.get('max_abs_prediction_error'), '.1%')} ({check.get('rows_checked')} rows)."]
        repeats = [x for r in dev["rows"] for x in r.get("repeat_rel_l2", [])]
        if repeats:
            lines.append(f"Repeat runs' final latents against round 1: max rel-L2 {max(repeats):.3g} "
                         "(0: the kernels are deterministic here).")
        lines += [f"- {note}" for note in dev.get("notes", [])] + [""]
    embedded = results.get("embedded") or {}
    lines += ["## Image fidelity: the embedded model (fluxlab.frontier on this device)", ""]
    if "frontier" in embedded:
        lines += [f"{embedded['model']}, {embedded['dtype']}, {embedded['steps']} steps, seeds {embedded['seeds']}, "
                  f"exact `{embedded['exact']}`, candidate `{embedded['fast']}`"
                  + (f" (`{kernels['fast']}` on q/k/v zero-padded: it does not take the model's head_dim)"
                     if embedded["fast"] != kernels["fast"] else "")
                  + ". Its step times are the tiny model's (launch-bound) and are not the speed claim; the [dev]-size "
                  "times above are.", "",
                  embedded["markdown"]]
        if embedded.get("exact_failures"):
            lines.append("Exact kernels that failed first: " + "; ".join(
                f"`{k}`: {v}" for k, v in embedded["exact_failures"].items()))
        if results.get("embedded_vs_dev_time"):
            lines += ["", "[dev]-size step time against the embedded model's fidelity (same k):", "",
                      "| schedule | [dev] step (ms) | embedded final-latent rel-L2 | SSIM | PSNR (dB) | verdict | "
                      "Pareto |", "|---|---|---|---|---|---|---|"]
            for r in results["embedded_vs_dev_time"]:
                lines.append(f"| {r['name']} | {r['dev_step_ms']:.1f} | {_fmt(r['final_latent_rel_l2'], '.3g')} | "
                             f"{_fmt(r['ssim'], '.4f')} | {_fmt(r['psnr'], '.1f')} | {r['verdict']} | "
                             f"{'P' if r['pareto'] else ''} |")
    else:
        lines.append(f"Not measured: {embedded.get('error', 'the run ended before this phase')}.")
    phases = ", ".join(f"{name} {_fmt(seconds, '.0f')}" for name, seconds in results.get("phases_s", {}).items())
    lines += ["", f"Phases (s): {phases}.", ""]
    return "\n".join(lines)


def figure(results: dict):
    """Left: [dev] step time vs [dev] final-latent drift; middle: vs the embedded model's; right: drift per step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dev, kernels = results.get("dev") or {}, results["kernels"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    pairs = [((r.get("step_ms"), r.get("final_latent_rel_l2"), r["name"], r.get("pareto")))
             for r in dev.get("rows", [])]
    _pareto_panel(axes[0], pairs, f"final-latent rel-L2 vs {kernels['exact']}", "[dev]-size model, random weights")
    pairs = [(r["dev_step_ms"], r["final_latent_rel_l2"], r["name"], r["pareto"])
             for r in results.get("embedded_vs_dev_time", [])]
    _pareto_panel(axes[1], pairs, "final-latent rel-L2 (worst seed)", "embedded model (trained), images")
    ax = axes[2]
    for r in dev.get("rows", []):
        curve = r.get("per_step_rel_l2_vs_exact")
        if curve:
            shown = [y if y and y > 0 else math.nan for y in curve]  # exact steps sit at 0: off a log axis
            ax.plot(range(1, len(curve) + 1), shown, marker=".", label=r["name"])
    spread = (dev.get("spread") or {}).get("final_latent_rel_l2")
    if spread:
        ax.axhline(spread, color="k", ls=":", lw=1, label=f"{kernels['spread']} vs {kernels['exact']} (final)")
    ax.set_yscale("log")
    ax.set_xlabel("denoising step")
    ax.set_ylabel(f"latent rel-L2 vs {kernels['exact']}")
    ax.set_title("[dev]-size model: drift per step", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    title = "frontier: step time from the [dev]-size model; fidelity from each model"
    fig.suptitle(("DRY RUN (CPU, tiny, stand-in kernels) — " if results["dry_run"] else "") + title, fontsize=10)
    fig.tight_layout()
    return fig


def _pareto_panel(ax, pairs, ylabel: str, title: str) -> None:
    ok = [(x, y, n, p) for x, y, n, p in pairs if x is not None and y is not None and math.isfinite(y)]
    floor = min([y for _, y, _, _ in ok if y > 0] or [1e-7]) / 10
    for x, y, name, pareto in ok:
        ax.scatter(x, max(y, floor), color="tab:blue" if pareto else "tab:gray", s=40, zorder=3)
        ax.annotate(name, (x, max(y, floor)), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((x, max(y, floor)) for x, y, _, p in ok if p)
    if front:
        ax.plot(*zip(*front), "k--", lw=1, label="Pareto set")
        ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("[dev]-size transformer step (ms)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + (" (exact row drawn at the floor)" if ok else ": not measured"), fontsize=9)


# -- helpers -------------------------------------------------------------------------------------------------------


def _kernel_runs(kernels: list) -> list[list]:
    """[fa4, fa4, sage, ...] as [[fa4, 2], [sage, ...]] (short in the JSON)."""
    runs: list[list] = []
    for kernel in kernels:
        if runs and runs[-1][0] == kernel:
            runs[-1][1] += 1
        else:
            runs.append([kernel, 1])
    return runs


def _expand(runs) -> list:
    return [kernel for kernel, count in runs or [] for _ in range(count)]


def _describe(schedule) -> str:
    from fluxlab.decide.runs import describe

    return describe(schedule)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _fmt(value, spec) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _error(exc) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _clean(value):
    """JSON without NaN/inf (written as null) and without tensors."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "latents"}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the run -------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for frontier_gpu.json, .md and .png")
    parser.add_argument("--tiny", action="store_true", help="DRY RUN on CPU: tiny config, sdpa / emu_sage / sdpa_math "
                        "stand in for fa4 / sage / sdpa_cudnn")
    parser.add_argument("--steps", type=int, default=STEPS, help="denoising steps T of the [dev]-size loop")
    parser.add_argument("--embedded-steps", type=int, default=None, help="steps of the embedded frontier (default T)")
    parser.add_argument("--embedded-text-tokens", type=int, default=None,
                        help="max_sequence_length for the embedded model (default: the pipeline's)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (the budget may cut them)")
    parser.add_argument("--budget-s", type=float, default=260.0,
                        help="seconds: a timing round after the first starts only if it should end by then")
    parser.add_argument("--size", type=int, default=None, help=f"image side (default {SIZE}; --tiny 128)")
    parser.add_argument("--text-tokens", type=int, default=None, help="prompt tokens (default 512; --tiny 32)")
    parser.add_argument("--spread", default=None, help="the second exact kernel (default sdpa_cudnn; sdpa_math is "
                        "the closest to float64 but costs ~50 s more at 28 steps of 1024^2)")
    parser.add_argument("--exact", default=None, help="the exact kernel (default fa4)")
    parser.add_argument("--fast", default=None, help="the fast candidate between the exact ends (default sage; "
                        "e.g. fa3_fp8 or sage2 on Hopper)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None,
                        help="regional torch.compile of the [dev]-size blocks (compile_repeated_blocks, fullgraph) "
                        "with this backend (default inductor; aot_eager for a CPU dry run)")
    parser.add_argument("--no-embedded", dest="embedded", action="store_false",
                        help="skip the embedded model's image frontier (the [dev]-size rounds only)")
    parser.add_argument("--no-locate", dest="locate", action="store_false",
                        help="skip the embedded frontier's 'except the culprit cells' row (locate_drift)")
    args = parser.parse_args(argv)
    args.size = args.size or (128 if args.tiny else SIZE)
    args.text_tokens = args.text_tokens or (32 if args.tiny else 512)
    args.embedded_steps = args.embedded_steps or args.steps
    if args.size % 16:
        parser.error(f"--size {args.size} is not a multiple of 16 (FLUX.2 makes one token per 16x16 pixels)")
    if args.steps < 2 or args.embedded_steps < 2 or args.rounds < 1:
        parser.error("--steps and --embedded-steps need at least 2 steps, --rounds at least 1")

    from fluxlab.decide.files import write_atomic, write_figure, write_json

    clock = Clock(args.budget_s)
    if args.tiny:
        device, kernels = torch.device("cpu"), dict(DRY_RUN_KERNELS)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run this on the GPU machine, or pass --tiny for a CPU dry run")
        device, kernels = torch.device("cuda"), dict(GPU_KERNELS)
        kernels["spread"] = args.spread or kernels["spread"]
        kernels["exact"] = args.exact or kernels["exact"]
        kernels["fast"] = args.fast or kernels["fast"]
    out = Path(args.out)
    results = {"dry_run": args.tiny, "complete": False, "environment": environment(device), "kernels": kernels,
               "stands_in_for": {v: GPU_KERNELS[k] for k, v in kernels.items()} if args.tiny else None,
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "phases_s": {}}

    def checkpoint():
        pareto_with_dev_time(results)
        payload = _clean(results)
        write_json(out / "frontier_gpu.json", payload)
        write_atomic(out / "frontier_gpu.md", markdown(payload))
        write_figure(out / "frontier_gpu.png", figure(payload))

    def embedded():
        results["embedded"] = embedded_phase(args, kernels, device)
        results["phases_s"]["embedded"] = results["embedded"].get("wall_s")

    status = 0
    try:
        dev_phase(args, kernels, device, clock, results, checkpoint, between=embedded)
        results["complete"] = "error" not in results.get("embedded", {})
    except Exception:  # noqa: BLE001 - what was measured is written, marked incomplete
        traceback.print_exc()
        status = 1
        if "embedded" not in results:
            embedded()
    results["phases_s"]["total"] = clock.elapsed
    checkpoint()
    print(markdown(_clean(results)))
    return status


if __name__ == "__main__":
    sys.exit(main())
