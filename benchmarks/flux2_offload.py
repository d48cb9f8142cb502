"""FLUX.2 [dev] at its real size, random weights, on a GPU capped to 80 GB: ``load_flux2(offload=...)`` end to end.

1. Writes the pipeline's real configs (transformer 32.2 B, Mistral3 text encoder ~24 B, VAE) to a folder, no weights.
2. ``fluxlab.load_flux2(folder, device="cuda", dtype=bfloat16)`` (no offload) must be refused before loading: its
   estimate (components built on the meta device) exceeds the capped free memory. Nothing is allocated.
3. The same estimate with ``offload="auto"`` (``plan_offload``, as load_flux2 calls it) says what it chooses.
4. Random weights are made where they fit (each component built on the GPU in bf16, then moved to host memory:
   ~105 GiB of host RAM; with less host RAM the text encoder gets fewer layers, and the result says so), the
   pipeline is placed as planned (``apply_offload``), fluxlab attached, and ``fluxlab.models.generate`` makes one
   image (2 steps at 1024^2), recording peak GPU memory and time.

GPU: ``python3 benchmarks/flux2_offload.py --out $OUT`` (writes ``flux2_offload.json`` and ``images/auto/``).
CPU check of steps 1-3: ``python benchmarks/flux2_offload.py --dry-run --out /tmp/offload`` (budget 80 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # flux2_step.environment: card, versions, date, command, git

GIB = 1024**3
H100_FRACTION = 80 / 141  # an H200 (141 GB) capped to an H100's 80 GB, as device.md describes
DRY_RUN_BUDGET = int(80e9 / 141e9 * 150.1e9)  # what that cap leaves on an H200 (total_memory ~150.1e9 bytes)
HOST_MARGIN = 8 * GIB  # for Python, CUDA libraries and page cache while all weights rest in host memory
DEV_OUT_LAYERS = (10, 20, 30)  # Flux2Pipeline's default text_encoder_out_layers

# Mistral-Small-3.1-24B (FLUX.2 [dev]'s text encoder), as published in its config.json.
MISTRAL3 = {
    "text_config": {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768,
                    "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e9}, "sliding_window": None,
                    "tie_word_embeddings": False},
    "vision_config": {"model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "head_dim": 64, "image_size": 1540,
                      "patch_size": 14, "num_channels": 3},
    "image_token_index": 10, "spatial_merge_size": 2, "projector_hidden_act": "gelu", "vision_feature_layer": -1,
    "multimodal_projector_bias": False, "tie_word_embeddings": False,
}


def text_encoder_config(layers: int) -> dict:
    config = json.loads(json.dumps(MISTRAL3))
    config["text_config"]["num_hidden_layers"] = layers
    return config


def write_config_folder(folder: Path, text_layers: int) -> Path:
    """A diffusers folder of FLUX.2 [dev]'s configs only: what a Hub snapshot of ``*.json`` holds."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Mistral3Config

    from fluxlab.models.tiny import TINY_CONFIGS

    with torch.device("meta"):
        Flux2Transformer2DModel().save_config(folder / "transformer")  # diffusers' defaults are [dev]'s
        AutoencoderKLFlux2().save_config(folder / "vae")
    Mistral3Config(**text_encoder_config(text_layers)).save_pretrained(folder / "text_encoder")
    FlowMatchEulerDiscreteScheduler(**TINY_CONFIGS["dev"]["scheduler"]).save_config(folder / "scheduler")
    index = {"_class_name": "Flux2Pipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "transformer": ["diffusers", "Flux2Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLFlux2"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def host_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_text_layers(available: int | None, weight_bytes_full: int, bytes_per_layer: int) -> int:
    """40 (the real encoder) when all weights fit host memory; else as many as fit, at least 30 (the layers FLUX.2
    [dev] reads hidden states from)."""
    if available is None or weight_bytes_full + HOST_MARGIN <= available:
        return 40
    short = weight_bytes_full + HOST_MARGIN - available
    return max(30, 40 - -(-short // bytes_per_layer))


def random_pipeline(folder: Path, device: str, dtype: torch.dtype, text_layers: int):
    """Flux2Pipeline with seeded random weights resting in host memory: each large component is built and
    initialised on ``device`` (fast), then moved to the CPU, one at a time."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from fluxlab.models.tiny import random_transformer
    from fluxlab.models.tiny import build_tiny_tokenizer

    timings = {}
    start = time.perf_counter()
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    transformer = random_transformer(config, device=device, dtype=dtype, seed=0).to("cpu")
    torch.cuda.empty_cache()
    timings["transformer_s"] = time.perf_counter() - start
    start = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(1)
        with torch.device(device):  # transformers initialises the weights in __init__, here on the GPU
            text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(**text_encoder_config(text_layers)))
    finally:
        torch.set_default_dtype(previous)
    text_encoder = text_encoder.eval().requires_grad_(False).to("cpu")
    torch.cuda.empty_cache()
    timings["text_encoder_s"] = time.perf_counter() - start
    vae = AutoencoderKLFlux2.from_config(AutoencoderKLFlux2.load_config(folder / "vae")).to(dtype).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(folder / "scheduler"))
    # The real tokenizer (Pixtral/Tekken) is a download; a byte-level one with Mistral's chat format stands in.
    pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                         tokenizer=build_tiny_tokenizer("dev"), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe, timings


def run(args) -> dict:
    import diffusers
    import transformers

    from flux2_step import environment

    import fluxlab
    from fluxlab.models.load import estimate_source
    from fluxlab.models.offload import MemoryBudgetError, apply_offload, gib, plan_offload
    from fluxlab.util import provenance

    dtype = torch.bfloat16
    on_gpu = torch.cuda.is_available() and not args.dry_run
    device = "cuda"  # the plan is for a GPU either way; a dry run gives the budget itself (no GPU touched)
    budget = None if on_gpu else args.budget
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "dry_run": not on_gpu,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__, "python": platform.python_version()},
              "size": {"height": args.height, "width": args.width}, "steps": args.steps,
              # when, where and with what (date, card, CUDA, every backend's version, git commit), as the other
              # benchmarks record it
              "environment": environment(torch.device("cuda" if on_gpu else "cpu")), "provenance": provenance()}
    if on_gpu:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.fraction)
        result["card"] = {"name": torch.cuda.get_device_name(0), "total_memory_bytes": total,
                          "fraction": args.fraction, "cap_bytes": int(args.fraction * total)}

    with tempfile.TemporaryDirectory() as tmp:
        full = write_config_folder(Path(tmp) / "full", 40)
        available = host_available_bytes()
        layers = args.text_layers
        if layers is None and on_gpu:  # the weights will rest in this machine's host memory: check it holds them
            full_estimate = estimate_source(str(full), None, dtype, args.height, args.width)
            per_layer = (full_estimate.components["text_encoder"].weight_bytes
                         - estimate_source(str(write_config_folder(Path(tmp) / "l39", 39)), None, dtype,
                                           args.height, args.width).components["text_encoder"].weight_bytes)
            layers = choose_text_layers(available, full_estimate.weight_bytes, per_layer)
        layers = layers or 40
        folder = full if layers == 40 else write_config_folder(Path(tmp) / f"l{layers}", layers)
        result["text_encoder"] = {
            "layers": layers, "of": 40, "host_available_bytes": available,
            "note": ("FLUX.2 [dev]'s Mistral3 encoder at full depth" if layers == 40 else
                     f"smaller than FLUX.2 [dev]'s: {layers} of 40 layers, because all weights must rest in host "
                     f"memory and only {gib(available)} was available")}

        # 2. no offload: refused before any weight loads
        allocated = torch.cuda.memory_allocated() if on_gpu else 0
        start = time.perf_counter()
        try:
            fluxlab.load_flux2(str(folder), device=device, dtype=dtype, height=args.height, width=args.width,
                               memory_budget=budget)
            refusal = {"refused": False, "message": "load_flux2 did not refuse"}
        except MemoryBudgetError as exc:
            refusal = {"refused": True, "message": str(exc), "plan": exc.plan.as_dict()}
        except Exception as exc:  # noqa: BLE001 - got past the check: it tried to load weights that are not there
            refusal = {"refused": False, "message": f"{type(exc).__name__}: {exc}"[:500]}
        refusal["seconds"] = round(time.perf_counter() - start, 3)
        refusal["gpu_bytes_allocated_by_the_call"] = (torch.cuda.memory_allocated() if on_gpu else 0) - allocated
        result["without_offload"] = refusal

        # 3. what "auto" chooses for the same pipeline
        estimate = estimate_source(str(folder), None, dtype, args.height, args.width)
        plan = plan_offload(estimate, "auto", device, budget)
        result["auto"] = plan.as_dict()
        print(f"without offload: {refusal['message'][:300]}\nauto: {plan}", flush=True)
        if not on_gpu:
            return result

        # 4. random weights, placed as planned, one image
        start = time.perf_counter()
        pipe, timings = random_pipeline(folder, "cuda", dtype, layers)
        timings["total_s"] = time.perf_counter() - start
        result["materialise"] = {**{k: round(v, 2) for k, v in timings.items()},
                                 "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    apply_offload(pipe, plan)
    fluxlab.attach(pipe)
    from fluxlab.models.generate import generate

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    (generated,) = generate(pipe, "auto", prompt="a red fox in the snow", steps=args.steps, width=args.width,
                            height=args.height, out_dir=Path(args.out) / "images", progress=False)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    cap = result["card"]["cap_bytes"]
    result["generation"] = {
        "wall_s": round(wall, 2), "timings": generated.manifest["timings"], "memory": generated.manifest["memory"],
        "peak_gpu_bytes": peak, "peak_gpu": gib(peak), "estimate_peak_bytes": plan.peak_estimate_bytes,
        "peak_over_estimate": round(peak / plan.peak_estimate_bytes, 3), "within_cap": peak <= cap,
        "attention_calls": generated.manifest["attention_calls"],
        "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=H100_FRACTION, help="torch.cuda per-process memory cap")
    parser.add_argument("--text-layers", type=int, default=None, help="text encoder depth (default: 40 if host "
                                                                        "memory holds every weight)")
    parser.add_argument("--dry-run", action="store_true", help="steps 1-3 only, budget --budget (no GPU needed)")
    parser.add_argument("--budget", type=int, default=DRY_RUN_BUDGET, help="bytes, for --dry-run")
    args = parser.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flux2_offload.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("without_offload", "auto", "generation") if k in result},
                     indent=1, default=str)[:4000])
    ok = result["without_offload"]["refused"] and result["auto"]["mode"] is not None
    if "generation" in result:
        ok = ok and result["generation"]["within_cap"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
