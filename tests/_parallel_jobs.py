"""Run by tests/test_parallel.py inside 2 spawned gloo ranks (module-level so spawned processes can import it)."""

from __future__ import annotations

import fluxlab
from fluxlab.parallel import compare_parallel
from fluxlab.registry import all_backends

BROKEN = "lse_log2"


def _lse_in_log2(q, k, v, *, scale, causal=False, return_lse=False):
    """sdpa_flash, but its LSE in base 2: single-rank outputs are untouched, ring's merge is not."""
    result = fluxlab.get_backend("sdpa_flash").fn(q, k, v, scale=scale, causal=causal, return_lse=return_lse)
    if not return_lse:
        return result
    out, lse = result
    return out, lse / 0.6931471805599453


def register_broken_lse():
    if BROKEN not in {b.name for b in all_backends()}:
        fluxlab.register_backend(BROKEN, _lse_in_log2, vendors={"cpu"}, returns_lse=True,
                                 description="sdpa_flash with a base-2 LSE (a broken adapter, for tests)")


FORWARD_CASES = [("ulysses=2", "sdpa"), ("ring=2", "reference"), ("ring=2", "sdpa_flash"), ("ring=2", BROKEN)]
GENERATE_CASES = [("ulysses=2", "sdpa"), ("ring=2", "sdpa_flash")]


def forward_and_generate(_payload):
    """Both targets and the in-rank refusals in one process group (start-up and imports dominate the time)."""
    forward = compare_parallel(cases=FORWARD_CASES, setup="_parallel_jobs:register_broken_lse")
    generate = compare_parallel(cases=GENERATE_CASES, target="generate", steps=2, text_tokens=64)
    return forward.as_dict(), generate.as_dict(), refusals_in_a_rank()


def refusals_in_a_rank() -> dict:
    """What enable_sequence_parallel and a forward say when the run cannot be parallel."""
    from fluxlab.parallel import ParallelRefusedError, disable_sequence_parallel, enable_sequence_parallel
    from fluxlab.parallel.model import build_transformer, run_transformer, transformer_inputs

    messages = {}
    transformer = build_transformer("tiny")
    try:
        enable_sequence_parallel(transformer, "sage", "ring=2")
    except ParallelRefusedError as exc:
        messages["sage"] = str(exc)
    enable_sequence_parallel(transformer, "sdpa", "ulysses=2")
    try:
        run_transformer(transformer, transformer_inputs(transformer, height=128, width=128, text_tokens=33))
    except ParallelRefusedError as exc:
        messages["odd_text"] = str(exc)
    try:
        enable_sequence_parallel(transformer, "sdpa", "ulysses=2")
    except ParallelRefusedError as exc:
        messages["twice"] = str(exc)
    disable_sequence_parallel(transformer)
    out = run_transformer(transformer, transformer_inputs(transformer, height=128, width=128, text_tokens=33))
    messages["after_disable_shape"] = tuple(out.shape)
    return messages


def fail_on_rank_1(_payload):
    import torch.distributed as dist

    return 1 // (1 - dist.get_rank())
