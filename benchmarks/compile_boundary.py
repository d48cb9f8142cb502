"""What fluxlab's custom op changes in inductor's code for one FLUX.2 block: the generated kernels, side by side.

    source benchmarks/device/env.sh && python3 benchmarks/compile_boundary.py --out $OUT/boundary
    python3 benchmarks/compile_boundary.py --tiny --out /tmp/boundary   # CPU dry run (C++ kernels, tiny config)

The profiled [dev] step (benchmarks/flux2_compile.py --profile) shows the attention kernels and GEMMs equal between
diffusers' compiled `native` and fluxlab's compiled `sdpa` (the same cuDNN kernel inside fluxlab's op), but one fused
kernel after the single-stream blocks' attention slower with fluxlab. This compiles one block of each kind
(``torch.compile(block, fullgraph=True)``, what ``compile_repeated_blocks`` does per block) with diffusers' attention
and with fluxlab's op, times them in interleaved rounds, and writes inductor's generated code for both, so the
kernels that differ can be read. Writes boundary.json (timings, kernel names per variant) and
<block>_<variant>.py (inductor's code) into --out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux2_step import TEXT_TOKENS, build_transformer, environment, step_inputs  # noqa: E402

from fluxlab.util import time_calls  # noqa: E402

BLOCKS = {"single": "single_transformer_blocks", "double": "transformer_blocks"}
VARIANTS = ("diffusers_native", "fluxlab_sdpa")


def block_inputs(transformer, inputs, attribute: str):
    """The positional and keyword arguments the transformer passes its first block of this kind."""
    seen = {}

    def keep(module, args, kwargs):
        seen.setdefault("call", (args, kwargs))

    handle = getattr(transformer, attribute)[0].register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.inference_mode():
            transformer(**inputs)
    finally:
        handle.remove()
    return seen["call"]


def route(transformer, variant: str) -> None:
    import fluxlab
    from fluxlab.models.attach import is_attached

    if variant == "diffusers_native":
        if is_attached(transformer):
            fluxlab.detach(transformer)
        transformer.set_attention_backend("native")
    elif not is_attached(transformer):
        fluxlab.attach(transformer, backend="sdpa")


def study(transformer, block, args_kwargs, device, args) -> dict:
    from torch._inductor.utils import run_and_get_code

    call_args, call_kwargs = args_kwargs
    compiled, code = {}, {}
    for variant in VARIANTS:
        route(transformer, variant)
        torch._dynamo.reset()
        fn = torch.compile(block, fullgraph=True, backend=args.compile_backend)
        with torch.inference_mode():
            if args.compile_backend == "inductor":
                _, sources = run_and_get_code(fn, *call_args, **call_kwargs)
                code[variant] = "\n\n# ---- next module ----\n\n".join(sources)
            else:
                fn(*call_args, **call_kwargs)
        compiled[variant] = fn
    times = {variant: [] for variant in VARIANTS}
    for round_index in range(args.rounds):
        for variant in (VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]):
            route(transformer, variant)
            with torch.inference_mode():
                times[variant] += time_calls(lambda: compiled[variant](*call_args, **call_kwargs), device=device,
                                             warmup=1, repeats=args.calls).times_ms  # warm-up: settle after a switch
    route(transformer, "diffusers_native")
    result = {variant: {"ms_median": statistics.median(t), "ms_min": min(t), "ms": t} for variant, t in times.items()}
    for variant, source in code.items():
        result[variant]["kernels"] = sorted(set(re.findall(r"\b((?:triton_(?:poi|red|per|tem)|cpp)_fused\w*)", source)))
        # inductor's note on an extern op's output it cannot assume 16-byte aligned (no vector loads after it)
        result[variant]["unaligned_outputs"] = re.findall(r"# buffer \w+ \(op: ([\w.]+)\) is assumed to be not aligned",
                                                          source)
    base = result["diffusers_native"]["ms_median"]
    result["fluxlab_sdpa_vs_diffusers_native"] = result["fluxlab_sdpa"]["ms_median"] / base
    return result, code


def cudagraph_check(transformer, block, args_kwargs, device, args) -> dict:
    """``mode="reduce-overhead"`` (CUDA graphs) on one block with fluxlab attached: does a backend switch after
    capture still change the output (the op is kept out of captured graphs), and what do CUDA graphs buy."""
    import fluxlab
    from fluxlab.util import rel_l2
    from torch._dynamo.utils import counters

    call_args, call_kwargs = args_kwargs
    route(transformer, "fluxlab_sdpa")
    torch._dynamo.reset()
    counters.clear()
    graphed = torch.compile(block, mode="reduce-overhead", fullgraph=True, backend=args.compile_backend)
    plain = torch.compile(block, fullgraph=True, backend=args.compile_backend)
    result = {}
    with torch.inference_mode():
        for _ in range(3):  # warm-up, record, replay
            first = graphed(*call_args, **call_kwargs)
        first = [t.clone() for t in first] if isinstance(first, tuple) else first.clone()
        fluxlab.set_backend(transformer, "sdpa_math")  # another exact kernel: different last bits
        switched = graphed(*call_args, **call_kwargs)
        eager = block(*call_args, **call_kwargs)
        fluxlab.set_backend(transformer, "sdpa")

        def flat(x):
            return torch.cat([t.float().flatten() for t in x]) if isinstance(x, tuple) else x.float().flatten()

        result["switch_changed_output"] = not torch.equal(flat(first), flat(switched))
        # after the switch the graphed block should sit nearer an eager sdpa_math block than before it
        result["rel_l2_vs_eager_math"] = {"before_switch": rel_l2(flat(first), flat(eager)),
                                          "after_switch": rel_l2(flat(switched), flat(eager))}
        result["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
        plain(*call_args, **call_kwargs)
        times = {"reduce_overhead": [], "default": []}
        for round_index in range(args.rounds):
            for name, fn in (("reduce_overhead", graphed), ("default", plain))[::1 if round_index % 2 else -1]:
                times[name] += time_calls(lambda: fn(*call_args, **call_kwargs), device=device, warmup=1,
                                          repeats=args.calls).times_ms
    result.update({f"{name}_ms_median": statistics.median(t) for name, t in times.items()})
    route(transformer, "diffusers_native")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--tiny", action="store_true", help="tiny transformer on the CPU: a dry run of the code path")
    args = parser.parse_args(argv)
    from fluxlab.models.generate import write_atomic, write_json
    from fluxlab.util import provenance

    if args.tiny:
        from fluxlab.models.tiny import TINY_CONFIGS

        config, device, size = dict(TINY_CONFIGS["dev"]["transformer"]), torch.device("cpu"), 64
    elif torch.cuda.is_available():
        config, device, size = {}, torch.device("cuda"), args.size
    else:
        parser.error("no GPU here: run this on the GPU machine, or pass --tiny for a CPU dry run")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "attention backends are experimental", at every switch
    transformer = build_transformer(config, device, torch.bfloat16)
    inputs = step_inputs(dict(transformer.config), size, device, torch.bfloat16, text_tokens=TEXT_TOKENS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(device), "provenance": provenance(), "tiny": args.tiny, "size": size,
               "compile": f"torch.compile(block, fullgraph=True, backend={args.compile_backend!r})", "blocks": {}}
    for name, attribute in BLOCKS.items():
        block = getattr(transformer, attribute)[0]
        results["blocks"][name], code = study(transformer, block, block_inputs(transformer, inputs, attribute),
                                              device, args)
        for variant, source in code.items():
            write_atomic(out / f"{name}_{variant}.py", source.encode())
        print(name, json.dumps({k: v for k, v in results["blocks"][name].items() if k in VARIANTS or "vs" in k},
                               default=lambda x: None)[:600], flush=True)
    try:
        single = transformer.single_transformer_blocks[0]
        results["cudagraphs"] = cudagraph_check(transformer, single, block_inputs(transformer, inputs,
                                                                                  BLOCKS["single"]), device, args)
    except Exception as exc:  # recorded: the timings and code above stand on their own
        results["cudagraphs"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print("cudagraphs", results["cudagraphs"], flush=True)
    write_json(out / "boundary.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
