"""FLUX.2 [dev] transformer step latency per attention backend — fluxlab's and diffusers' own — on one GPU.

    python3 benchmarks/flux2_step.py --out benchmarks/results/h100/flux2_step
    python3 benchmarks/flux2_step.py --tiny --out /tmp/flux2-step     # the same code path on CPU, in seconds

One transformer forward (= one denoising step of [dev], batch 1) with random bf16 weights at 1024^2 (S = 512 text +
4096 image tokens) and 2048^2 (512 + 16384), for: diffusers' ``native``, ``_native_cudnn`` and ``_native_flash``
(``transformer.set_attention_backend``); fluxlab attached with its automatic pick and with every FLUX.2 backend
that runs here; and fluxlab attached with a no-op attention (returns q), whose step time is everything but
attention. Attention's share of a step is measured twice: (step - no-op step) / step, and the attention kernel alone
at the step's shapes x calls per step (CUDA events). Also the tiny pipeline's CPU end-to-end time. Writes
flux2_step.json and flux2_step.md to --out, with card, versions and command.

The 32 B-parameter transformer is built on the meta device with bf16 as the default dtype, then materialised with
``to_empty`` on the GPU and initialised there (64 GB; building it in fp32 first does not fit an 80 GB card).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

SIZES = (1024, 2048)
TEXT_TOKENS = 512  # the pipelines pad every prompt to max_sequence_length=512
DIFFUSERS_BACKENDS = ("native", "_native_cudnn", "_native_flash")
# Not step-benchmark material at these sizes; pass them in --backends to run them anyway.
SKIPPED = {
    "reference": "float64 attention: minutes per step at S = 16896",
    "sdpa_math": "materialises the S x S scores: 27 GB per call at 2048^2",
}
NOOP = "noop_attention"
TINY_SIZES = (128, 256)


# -- model and inputs ----------------------------------------------------------------------------------------------


def build_transformer(config: dict, device, dtype, seed: int = 0):
    """Random-weight Flux2Transformer2DModel built on meta, materialised on ``device`` and initialised there."""
    from fluxlab.models.tiny import random_transformer

    return random_transformer(config, device=device, dtype=dtype, seed=seed)


def step_inputs(config: dict, size: int, device, dtype, text_tokens: int = TEXT_TOKENS, seed: int = 0) -> dict:
    """What the [dev] pipeline passes the transformer for a ``size``^2 image (after VAE x8 and 2x2 packing)."""
    from diffusers import Flux2Pipeline

    side = size // 16
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, side * side, config["in_channels"], generator=gen)
    context = torch.randn(1, text_tokens, config["joint_attention_dim"], generator=gen)
    img_ids = Flux2Pipeline._prepare_latent_ids(torch.empty(1, 1, side, side))
    txt_ids = Flux2Pipeline._prepare_text_ids(torch.empty(1, text_tokens, 1))
    inputs = {"hidden_states": latents.to(device, dtype), "encoder_hidden_states": context.to(device, dtype),
              "timestep": torch.tensor([0.5], device=device, dtype=dtype), "img_ids": img_ids.to(device),
              "txt_ids": txt_ids.to(device), "return_dict": False}
    if config.get("guidance_embeds", True):
        inputs["guidance"] = torch.tensor([4.0], device=device, dtype=dtype)
    return inputs


# -- timing --------------------------------------------------------------------------------------------------------


def time_ms(fn, device, *, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls after ``warmup`` (``fluxlab.util.time_calls``: the GPU is
    synchronised before and after each call)."""
    from fluxlab.util import time_calls

    return time_calls(fn, warmup=warmup, repeats=repeats, device=device).times_ms


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _error(exc) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


# -- one configuration ---------------------------------------------------------------------------------------------


def run_diffusers(transformer, inputs, name, device, warmup, repeats) -> dict:
    """diffusers' own dispatcher, fluxlab detached."""
    from diffusers.utils import logging as diffusers_logging

    row = {"backend": name, "via": "diffusers"}
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", once per switch
    try:
        transformer.set_attention_backend(name)
        with torch.inference_mode():
            out = transformer(**inputs)[0]
            row["ms"] = time_ms(lambda: transformer(**inputs), device, warmup=warmup, repeats=repeats)
        row["_out"] = out
    except Exception as exc:  # a kernel torch cannot run here, OOM: recorded, the run goes on
        row["error"] = _error(exc)
    finally:
        transformer.set_attention_backend("native")  # diffusers' default; reset_attention_backend leaves the global
        diffusers_logging.set_verbosity(verbosity)
    _free(device)
    return row


def run_fluxlab(transformer, inputs, name, device, warmup, repeats, allowed) -> dict:
    """fluxlab attached to the transformer; ``name`` None is fluxlab's automatic choice."""
    import fluxlab

    row = {"backend": name or "auto", "via": "fluxlab"}
    fluxlab.attach(transformer, backend=name, allowed=allowed)
    try:
        with torch.inference_mode():
            with fluxlab.capture(transformer, to="meta", lse=False) as watched:  # which kernel really ran
                out = transformer(**inputs)[0]
            row["ran"] = watched.backends_used()
            row["ms"] = time_ms(lambda: transformer(**inputs), device, warmup=warmup, repeats=repeats)
        row["_out"] = out
    except Exception as exc:
        row["error"] = _error(exc)
    finally:
        fluxlab.detach(transformer)
    _free(device)
    return row


def attention_alone(config, size, device, dtype, backends, warmup, repeats, text_tokens=TEXT_TOKENS) -> dict:
    """fluxlab.attention at the step's shape, per backend: ms per call and x calls per step."""
    import fluxlab

    seq = text_tokens + (size // 16) ** 2
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    calls = config["num_layers"] + config["num_single_layers"]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, seq, heads, head_dim, generator=gen).to(device, dtype) for _ in range(3))
    results = {}
    for name in backends:
        try:
            with torch.inference_mode():
                ms = time_ms(lambda: fluxlab.attention(q, k, v, backend=name), device, warmup=warmup,
                             repeats=repeats)
            per_call = statistics.median(ms)
            results[name] = {"ms_per_call": per_call, "ms_per_step": per_call * calls, "calls_per_step": calls}
        except Exception as exc:
            results[name] = {"error": _error(exc)}
        _free(device)
    return results


def tiny_cpu_end_to_end(steps: int = 4) -> dict:
    """The tiny offline pipeline, 64x64, ``steps`` steps, on CPU: build and generate times."""
    import fluxlab

    start = time.perf_counter()
    pipe = fluxlab.load_flux2("tiny", flux2_variant="dev", backend="sdpa")
    build_s = time.perf_counter() - start
    try:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            pipe(prompt="a red circle on a blue background", height=64, width=64, num_inference_steps=steps,
                 generator=torch.Generator().manual_seed(0), output_type="pil")
            runs.append(time.perf_counter() - start)
    finally:
        fluxlab.detach(pipe)
    return {"build_s": build_s, "generate_s": runs, "steps": steps, "size": 64,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


# -- the run -------------------------------------------------------------------------------------------------------


def _fluxlab_backends(device, dtype, requested) -> tuple[list[str], dict[str, str]]:
    """FLUX.2 backends that can run on this device, and why the others are left out."""
    import fluxlab
    from fluxlab.platform import platform_for_device

    platform = platform_for_device(device)
    names, left_out = [], {}
    probe = torch.empty(1, 8, 2, 128, dtype=dtype, device="meta")
    for status in fluxlab.backends(platform):
        name = status.name
        if name not in fluxlab.models.FLUX2_BACKENDS or name == "fa":  # "fa" is fa4/fa3/fa2, each measured itself
            continue
        if requested is not None and name not in requested:
            continue
        if requested is None and name in SKIPPED:
            left_out[name] = SKIPPED[name]
            continue
        reasons = list(status.reasons) or fluxlab.registry.get_backend(name).input_reasons(probe, probe, platform,
                                                                                   causal=False, return_lse=False)
        if reasons:
            left_out[name] = "; ".join(reasons)
            continue
        names.append(name)
    return names, left_out


def environment(device) -> dict:
    import fluxlab
    from fluxlab.util import provenance

    made = provenance()
    found = made["versions"]
    info = {"date": made["date"], "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "python": found["python"], "torch": found["torch"], "diffusers": found["diffusers"],
            "fluxlab": found["fluxlab"], "platform": made["platform"], "git": made["git"],
            "backend_versions": {s.name: s.version for s in fluxlab.backends() if s.available}}
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda or torch.version.hip
        info["cudnn"] = torch.backends.cudnn.version()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    return info


def run(args) -> dict:
    import fluxlab
    from fluxlab.backends.base import FLOAT_DTYPES
    from fluxlab.registry import canonical_name
    from fluxlab.util import rel_l2

    if args.tiny:
        from fluxlab.models.tiny import TINY_CONFIGS

        config = dict(TINY_CONFIGS["dev"]["transformer"])
        device, sizes = torch.device("cpu"), args.sizes or TINY_SIZES
    else:
        config = {}  # diffusers' defaults are FLUX.2 [dev]: 8 + 48 blocks, 48 heads x 128
        if not torch.cuda.is_available():
            raise SystemExit("no GPU here: run this on the GPU machine, or pass --tiny for a CPU dry run")
        device, sizes = torch.device("cuda"), args.sizes or SIZES
    dtype = torch.bfloat16
    start = time.perf_counter()
    transformer = build_transformer(config, device, dtype, seed=args.seed)
    full_config = dict(transformer.config)
    results = {"environment": environment(device), "tiny": args.tiny,
               "model": {"params": sum(p.numel() for p in transformer.parameters()),
                         "layers": full_config["num_layers"], "single_layers": full_config["num_single_layers"],
                         "heads": full_config["num_attention_heads"],
                         "head_dim": full_config["attention_head_dim"], "dtype": "bfloat16",
                         "build_s": time.perf_counter() - start},
               "sizes": {}}
    fluxlab.register_backend(NOOP, lambda q, k, v, *, scale, causal=False, return_lse=False: q,
                             description="no attention (returns q): the step without attention", dtypes=FLOAT_DTYPES,
                             replace=True)
    names, left_out = _fluxlab_backends(device, dtype, set(args.backends) if args.backends else None)
    results["left_out"] = left_out
    allowed = fluxlab.models.FLUX2_BACKENDS | {NOOP}
    calls = full_config["num_layers"] + full_config["num_single_layers"]
    try:
        for size in sizes:
            inputs = step_inputs(full_config, size, device, dtype, text_tokens=args.text_tokens)
            seq = args.text_tokens + (size // 16) ** 2
            # 2048^2 steps take ~4x longer: about half the repeats keeps the run within the machine's 10 minutes
            warmup, repeats = args.warmup, (args.repeats if size <= 1024 else max(1, args.repeats // 2 + 1))
            probe = inputs["hidden_states"].new_empty(1, seq, full_config["num_attention_heads"],
                                                      full_config["attention_head_dim"], device="meta")
            rows = [run_diffusers(transformer, inputs, name, device, warmup, repeats) for name in DIFFUSERS_BACKENDS]
            rows.append(run_fluxlab(transformer, inputs, None, device, warmup, repeats, allowed))
            rows += [run_fluxlab(transformer, inputs, name, device, warmup, repeats, allowed) for name in names]
            noop = run_fluxlab(transformer, inputs, NOOP, device, warmup, repeats, allowed)
            native = next((r["_out"] for r in rows if r["backend"] == "native" and "_out" in r), None)
            alone = attention_alone(full_config, size, device, dtype, names, warmup, repeats,
                                    text_tokens=args.text_tokens)
            noop_ms = statistics.median(noop["ms"]) if "ms" in noop else None
            for row in rows:
                out = row.pop("_out", None)
                if "ms" not in row:
                    continue
                row["ms_median"] = statistics.median(row["ms"])
                if native is not None and out is not None:
                    row["rel_l2_vs_native"] = rel_l2(out, native)
                if noop_ms is not None:
                    row["attention_share_vs_noop"] = (row["ms_median"] - noop_ms) / row["ms_median"]
                kernel = canonical_name(next(iter(row.get("ran", {})), row["backend"]))  # native -> sdpa, ...
                if kernel in alone and "ms_per_step" in alone[kernel]:
                    row["attention_share_kernel_alone"] = alone[kernel]["ms_per_step"] / row["ms_median"]
            noop.pop("_out", None)
            timed = [r for r in rows if "ms_median" in r]
            fastest_diffusers = min((r for r in timed if r["via"] == "diffusers"), key=lambda r: r["ms_median"],
                                    default=None)
            auto = next((r for r in timed if r["via"] == "fluxlab" and r["backend"] == "auto"), None)
            verdict = None
            if fastest_diffusers and auto:
                verdict = {"fluxlab_auto": auto["ms_median"], "fluxlab_auto_ran": auto.get("ran"),
                           "diffusers_fastest": fastest_diffusers["backend"],
                           "diffusers_fastest_ms": fastest_diffusers["ms_median"],
                           "ratio": auto["ms_median"] / fastest_diffusers["ms_median"]}
            results["sizes"][str(size)] = {
                "target": verdict,
                "seq": seq, "text_tokens": args.text_tokens, "image_tokens": seq - args.text_tokens,
                "attention_calls_per_step": calls, "fluxlab_default": fluxlab.dispatch.default_backend(probe),
                "rows": rows, "noop": {**noop, "ms_median": noop_ms}, "attention_alone": alone}
            print(f"{size}^2 done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    finally:
        fluxlab.registry.unregister_backend(NOOP)
    del transformer
    _free(device)
    if not args.skip_cpu:
        results["tiny_cpu_end_to_end"] = tiny_cpu_end_to_end()
    results["total_s"] = time.perf_counter() - start
    return results


# -- report --------------------------------------------------------------------------------------------------------


def _fmt(value, spec) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(results: dict) -> str:
    env = results["environment"]
    model = results["model"]
    lines = ["# FLUX.2 transformer step per attention backend", "",
             f"{'TINY DRY RUN (CPU, tiny config) — not a measurement of FLUX.2 [dev]. ' if results['tiny'] else ''}"
             f"Card: {env.get('card', 'CPU')}; torch {env['torch']}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"Triton {env.get('triton')}, diffusers {env['diffusers']}, fluxlab {env['fluxlab']}; {env['date']}.",
             f"Command: `{env['command']}`", "",
             f"Model: {model['params'] / 1e9:.2f} B parameters, {model['layers']} double + {model['single_layers']} "
             f"single blocks, {model['heads']} heads x {model['head_dim']}, bf16, random weights, batch 1; one "
             "transformer forward = one [dev] denoising step. Median of repeated runs after warm-up.", ""]
    for size, block in results["sizes"].items():
        native = next((r for r in block["rows"] if r["backend"] == "native" and "ms_median" in r), None)
        lines += [f"## {size}x{size}: S = {block['text_tokens']} text + {block['image_tokens']} image = {block['seq']}",
                  "", f"fluxlab's automatic pick here: `{block['fluxlab_default']}`. Step without attention (no-op "
                  f"kernel): {_fmt(block['noop'].get('ms_median'), '.1f')} ms.", "",
                  "| backend | via | kernel that ran | ms / step | vs diffusers native | attention share (vs no-op) "
                  "| attention share (kernel alone) | rel-L2 vs native |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in block["rows"]:
            if "error" in row:
                lines.append(f"| {row['backend']} | {row['via']} | — | error: {row['error']} | | | | |")
                continue
            ran = ", ".join(row.get("ran", {})) or row["backend"]
            ratio = row["ms_median"] / native["ms_median"] if native else None
            lines.append(f"| {row['backend']} | {row['via']} | {ran} | {row['ms_median']:.1f} | {_fmt(ratio, '.3f')}x "
                         f"| {_fmt(row.get('attention_share_vs_noop'), '.1%')} "
                         f"| {_fmt(row.get('attention_share_kernel_alone'), '.1%')} "
                         f"| {_fmt(row.get('rel_l2_vs_native'), '.2e')} |")
        target = block.get("target")
        if target:
            lines += ["", f"Target (fluxlab's automatic pick never slower than diffusers' fastest): fluxlab auto "
                      f"({', '.join(target['fluxlab_auto_ran'] or {})}) {target['fluxlab_auto']:.1f} ms vs diffusers "
                      f"`{target['diffusers_fastest']}` {target['diffusers_fastest_ms']:.1f} ms = "
                      f"{target['ratio']:.3f}x."]
        lines += ["", "Attention kernel alone at this shape (fluxlab.attention, per call and x calls per step):", "",
                  "| backend | ms / call | ms / step |", "|---|---|---|"]
        for name, entry in block["attention_alone"].items():
            if "error" in entry:
                lines.append(f"| {name} | error: {entry['error']} | |")
            else:
                lines.append(f"| {name} | {entry['ms_per_call']:.2f} | {entry['ms_per_step']:.1f} |")
        lines.append("")
    if results.get("left_out"):
        lines += ["Not run: " + "; ".join(f"`{k}` ({v})" for k, v in results["left_out"].items()), ""]
    cpu = results.get("tiny_cpu_end_to_end")
    if cpu:
        lines += [f"Tiny offline pipeline on CPU ({cpu['cpu_count']} cores, {cpu['torch_threads']} torch threads), "
                  f"{cpu['size']}x{cpu['size']}, {cpu['steps']} steps: build {cpu['build_s']:.2f} s, generate "
                  + ", ".join(f"{s:.2f}" for s in cpu["generate_s"]) + " s.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for flux2_step.json and flux2_step.md")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"image sides (default {SIZES}; --tiny {TINY_SIZES})")
    parser.add_argument("--backends", nargs="+", help="fluxlab backends to run (default: every FLUX.2 backend "
                        f"available here except {sorted(SKIPPED)})")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs at 1024^2 (about half at 2048^2)")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny transformer on CPU: a dry run of the code path")
    parser.add_argument("--skip-cpu", action="store_true", help="skip the tiny pipeline's CPU end-to-end timing")
    return run_and_write(parser, parser.parse_args(argv), run, markdown, "flux2_step")


def run_and_write(parser, args, run, markdown, stem: str) -> int:
    """The benchmarks' main: check --sizes, run, write ``stem``.json/.md into --out and print the table.
    A failed run prints its traceback and returns 1, writing nothing."""
    for size in args.sizes or ():
        if size % 16:
            parser.error(f"size {size} is not a multiple of 16")
    try:
        results = run(args)
    except Exception:
        traceback.print_exc()
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from fluxlab.models.generate import write_atomic, write_json

    write_json(out / f"{stem}.json", results)
    write_atomic(out / f"{stem}.md", markdown(results).encode())
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
