"""Run by tests/test_parallel.py inside 2 spawned gloo ranks (module-level so spawned processes can import it)."""

from __future__ import annotations

import torch

import fluxlab
from fluxlab.parallel import compare_parallel
from fluxlab.registry import all_backends

BROKEN = "lse_log2"  # the first of the planted kernels below
LN2 = 0.6931471805599453


def _sdpa_flash(q, k, v, scale, causal, return_lse):
    return fluxlab.registry.get_backend("sdpa_flash").fn(q, k, v, scale=scale, causal=causal, return_lse=return_lse)


def _lse_in_log2(q, k, v, *, scale, causal=False, return_lse=False):
    """sdpa_flash, but its LSE in base 2: single-rank outputs are untouched, ring's merge is not."""
    result = _sdpa_flash(q, k, v, scale, causal, return_lse)
    if not return_lse:
        return result
    out, lse = result
    return out, lse / LN2


def _lse_unscaled(q, k, v, *, scale, causal=False, return_lse=False):
    """sdpa_flash's output, but the LSE of the logits without the softmax scale."""
    result = _sdpa_flash(q, k, v, scale, causal, return_lse)
    if not return_lse:
        return result
    out, _ = result
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float())
    return out, torch.logsumexp(logits, dim=-1)


def _lse_heads_rolled(q, k, v, *, scale, causal=False, return_lse=False):
    """sdpa_flash's output, but each head's LSE handed to the next head."""
    result = _sdpa_flash(q, k, v, scale, causal, return_lse)
    if not return_lse:
        return result
    out, lse = result
    return out, lse.roll(1, dims=1)


PLANTED = {
    "lse_log2": (_lse_in_log2, "sdpa_flash with a base-2 LSE (a broken adapter, for tests)"),
    "lse_unscaled": (_lse_unscaled, "sdpa_flash with the LSE of unscaled logits (a broken adapter, for tests)"),
    "lse_rolled": (_lse_heads_rolled, "sdpa_flash with its LSE heads rolled by one (a broken adapter, for tests)"),
}


def register_broken_lse():
    known = {b.name for b in all_backends()}
    for name, (fn, description) in PLANTED.items():
        if name not in known:
            fluxlab.register_backend(name, fn, vendors={"cpu"}, returns_lse=True, description=description)


FORWARD_CASES = ([("ulysses=2", "sdpa"), ("ring=2", "reference"), ("ring=2", "sdpa_flash"), ("ulysses=2", BROKEN)]
                 + [("ring=2", name) for name in PLANTED])
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
    import warnings

    from fluxlab.parallel.lse import LseWarning

    with warnings.catch_warnings(record=True) as caught:  # lse_log2 is registered in the ranks by now
        warnings.simplefilter("always")
        enable_sequence_parallel(transformer, BROKEN, "ring=2")
        disable_sequence_parallel(transformer)
        enable_sequence_parallel(transformer, "sdpa_flash", "ring=2")
        disable_sequence_parallel(transformer)
    messages["lse_warnings"] = [str(w.message) for w in caught if issubclass(w.category, LseWarning)]
    out = run_transformer(transformer, transformer_inputs(transformer, height=128, width=128, text_tokens=33))
    messages["after_disable_shape"] = tuple(out.shape)
    return messages


def fail_on_rank_1(_payload):
    import torch.distributed as dist

    return 1 // (1 - dist.get_rank())
