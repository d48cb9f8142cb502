"""torch.compile with fluxlab attached on a GPU: inductor's real Triton kernels, route tokens on the device,
offloaded models and CUDA graphs (the CPU suite covers the same paths with C++ kernels or aot_eager)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import fluxlab
from fluxlab.models.attach import state_of

from _flux2 import generate, rel_l2

pytestmark = pytest.mark.gpu
COMPILED_VS_EAGER_MAX_REL_L2 = 2e-2  # bf16 Triton kernels fuse and round differently from eager ones
SWITCH_MIN_REL_L2 = 1e-3  # a kernel at half the softmax scale moves the image far more than this
ALLOWED = fluxlab.models.FLUX2_BACKENDS | {"half_scale"}


@pytest.fixture(autouse=True)
def fresh_dynamo_and_a_planted_kernel():
    from fluxlab.backends.sdpa import _sdpa

    def half_scale(q, k, v, *, scale, causal=False, return_lse=False):
        return _sdpa(q, k, v, scale=scale / 2, causal=causal, return_lse=False)

    torch._dynamo.reset()
    counters.clear()
    fluxlab.register_backend("half_scale", half_scale, description="SDPA at half the scale (GPU compile test)")
    yield
    fluxlab.registry.unregister_backend("half_scale")
    torch._dynamo.reset()


def _token_devices(pipe) -> set:
    return {route.token.device.type for route in state_of(pipe).routes.values()}


def test_regional_inductor_compile_on_the_gpu_routes_by_device_tokens_and_follows_a_switch():
    pipe = fluxlab.load_flux2("tiny", device="cuda", backend="sdpa", allowed=ALLOWED)
    try:
        eager = generate(pipe)
        assert _token_devices(pipe) == {"cuda"}  # a CPU input would make inductor assume unaligned outputs
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        compiled = generate(pipe)
        assert sum(counters["graph_break"].values()) == 0
        assert rel_l2(compiled, eager) < COMPILED_VS_EAGER_MAX_REL_L2
        fluxlab.set_backend(pipe, "half_scale")
        assert rel_l2(generate(pipe), compiled) > SWITCH_MIN_REL_L2  # chosen inside the op: the switch shows
    finally:
        fluxlab.detach(pipe)


def test_model_offload_moves_the_tokens_to_the_execution_device():
    pipe = fluxlab.load_flux2("tiny", device="cuda", offload="model", height=64, width=64)
    try:
        assert _token_devices(pipe) == {"cpu"}  # attached while the weights rest on the CPU
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        generate(pipe)
        assert _token_devices(pipe) == {"cuda"}  # the attach hook followed the inputs
        assert sum(counters["graph_break"].values()) == 0
    finally:
        fluxlab.detach(pipe)


def _flat(output) -> torch.Tensor:
    """A block's output (a tensor, or (encoder, image) streams) as one fresh tensor, outside CUDA graph memory."""
    parts = output if isinstance(output, tuple) else (output,)
    return torch.cat([t.float().flatten() for t in parts])


def test_cuda_graphs_keep_fluxlab_switchable():
    """One block under mode="reduce-overhead" (captured in CUDA graphs, not skipped): fluxlab's op runs outside
    the captured parts, so a switch after capture still changes what runs."""
    pipe = fluxlab.load_flux2("tiny", device="cuda", backend="sdpa", allowed=ALLOWED)
    try:
        block = pipe.transformer.single_transformer_blocks[0]
        seen = {}
        handle = block.register_forward_pre_hook(lambda m, a, k: seen.setdefault("call", (a, k)), with_kwargs=True)
        generate(pipe, steps=1)
        handle.remove()
        args, kwargs = seen["call"]
        graphed = torch.compile(block, mode="reduce-overhead", fullgraph=True)
        with torch.inference_mode():
            for _ in range(3):  # warm-up, capture, replay
                first = _flat(graphed(*args, **kwargs))
            fluxlab.set_backend(pipe, "half_scale")
            switched = _flat(graphed(*args, **kwargs))
        assert counters["inductor"]["cudagraph_skips"] == 0  # the graph was captured ...
        assert rel_l2(switched, first) > SWITCH_MIN_REL_L2  # ... and did not freeze the kernel choice
    finally:
        fluxlab.detach(pipe)
