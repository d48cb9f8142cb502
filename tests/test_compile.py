"""torch.compile with fluxlab attached: full graphs (no breaks), one op per call, switches without recompiling.

Tolerance: inductor fuses and reorders the float32 tiny model's matrix products and norms, so a compiled image
differs from the eager one by float32 rounding only (measured max |diff| ~2e-6 on images in [0, 1]); 1e-5 bounds
that, while a wrong attention scale moves pixels by ~1e-2 (test_flux2_routing.py). The tests that check routing
rather than numerics compile with dynamo's ``aot_eager`` backend: the same graph capture (graph breaks, guards,
recompiles, fake implementations), without minutes of C++ builds on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import fluxlab
from fluxlab.backends.sdpa import _sdpa
from fluxlab.models.tiny import build_tiny_pipeline

from _flux2 import attached, generate, rel_l2

COMPILED_VS_EAGER_ATOL = 1e-5
WRONG_SCALE_MIN_REL_L2 = 1e-3
LAYERS = 4  # the tiny model: 2 double + 2 single blocks


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def kernels():
    """Two user backends: SDPA that counts its calls, and SDPA at twice the softmax scale (visibly different)."""
    calls = []

    def counted(q, k, v, *, scale, causal=False, return_lse=False):
        calls.append(q.shape)
        return _sdpa(q, k, v, scale=scale, causal=causal, return_lse=False)

    def wrong_scale(q, k, v, *, scale, causal=False, return_lse=False):
        return _sdpa(q, k, v, scale=2 * scale, causal=causal, return_lse=False)

    fluxlab.register_backend("counted", counted, description="SDPA counting its calls (test)")
    fluxlab.register_backend("wrong_scale", wrong_scale, description="SDPA at twice the scale (test)")
    try:
        yield calls
    finally:
        fluxlab.registry.unregister_backend("counted")
        fluxlab.registry.unregister_backend("wrong_scale")


ALLOWED = fluxlab.models.FLUX2_BACKENDS | {"counted", "wrong_scale"}


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_fullgraph_inductor_compile_calls_a_user_backend_at_run_time(kernels):
    pipe = fluxlab.load_flux2("tiny", backend="counted", allowed=ALLOWED)
    eager = generate(pipe)
    eager_calls = len(kernels)
    assert eager_calls == LAYERS * 2

    pipe.transformer.compile(fullgraph=True)  # inductor: C++ kernels on this CPU
    kernels.clear()
    compiled = generate(pipe)
    assert len(kernels) == eager_calls  # the registered Python kernel ran inside the compiled graph, every call
    assert graph_breaks() == 0
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=COMPILED_VS_EAGER_ATOL)
    fluxlab.detach(pipe)


def test_regional_compile_follows_switches_and_schedules_without_recompiling(kernels):
    pipe = fluxlab.load_flux2("tiny", backend="sdpa", allowed=ALLOWED)
    eager = generate(pipe)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    compiled = generate(pipe)
    assert np.array_equal(compiled, eager)  # aot_eager runs the same kernels: bit-identical
    compiled_graphs = graphs()
    assert compiled_graphs == 2  # one per block class, shared by every layer of it (routes are graph inputs)

    fluxlab.set_backend(pipe, "wrong_scale")
    assert rel_l2(generate(pipe), eager) > WRONG_SCALE_MIN_REL_L2  # the switch took effect ...
    fluxlab.set_backend(pipe, "counted")
    assert np.array_equal(generate(pipe), eager) and len(kernels) == LAYERS * 2
    fluxlab.set_schedule(pipe, fluxlab.Schedule.exact_ends("sdpa", "wrong_scale"))
    with fluxlab.capture(pipe, to="meta") as cap:
        generate(pipe, steps=3)
    assert sorted({(r.step, r.backend) for r in cap}) == [(0, "sdpa"), (1, "wrong_scale"), (2, "sdpa")]
    assert {r.text_tokens for r in cap} == {64}  # the transformer's forward runs eagerly here: its hook saw the text
    assert graphs() == compiled_graphs  # ... and nothing recompiled: the backend is chosen inside the op
    assert graph_breaks() == 0
    fluxlab.detach(pipe)


def test_whole_model_compile_locates_steps_and_an_unattached_twin_stays_diffusers(kernels):
    pipe = fluxlab.load_flux2("tiny", backend="sdpa", allowed=ALLOWED)
    twin = build_tiny_pipeline("dev")
    native = generate(twin)
    pipe.transformer.compile(fullgraph=True, backend="aot_eager")
    twin.transformer.compile(fullgraph=True, backend="aot_eager")
    fluxlab.set_schedule(pipe, fluxlab.Schedule.exact_ends("counted", "wrong_scale"))
    with fluxlab.capture(pipe, to="meta") as cap:
        generate(pipe, steps=3)
    assert sorted({(r.step, r.backend) for r in cap}) == [(0, "counted"), (1, "wrong_scale"), (2, "counted")]
    assert len(cap) == LAYERS * 3
    assert np.array_equal(generate(twin), native)  # per-model routing holds in compiled code too
    assert graph_breaks() == 0
    fluxlab.detach(pipe)


def test_a_torch_compile_wrapped_transformer_is_accepted(kernels):
    pipe = build_tiny_pipeline("dev")
    native = generate(pipe)
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True, backend="aot_eager")
    assert type(pipe.transformer).__name__ == "OptimizedModule"
    with attached(pipe, backend="sdpa", allowed=ALLOWED):
        fluxlab.set_backend(pipe, "counted")
        fluxlab.set_backend(pipe.transformer, "counted")  # the wrapper itself, too
        assert np.array_equal(generate(pipe), native)
        assert len(kernels) == LAYERS * 2
    assert graph_breaks() == 0
    assert np.array_equal(generate(pipe), native)  # detached: diffusers' attention again (a recompile)


def test_fluxlab_attention_is_one_op_under_compile():
    q, k, v = (torch.randn(1, 24, 2, 16) for _ in range(3))

    def fn(q, k, v):
        out, lse = fluxlab.attention(q, k, v, backend="reference", return_lse=True)
        return fluxlab.attention(q, k, v, backend="sdpa", allowed={"sdpa"}, heads=2) + out, lse

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, lse = compiled(q, k, v)
    eager_out, eager_lse = fn(q, k, v)
    torch.testing.assert_close(out, eager_out, rtol=0, atol=0)
    torch.testing.assert_close(lse, eager_lse, rtol=0, atol=0)
    assert graph_breaks() == 0
    # Refusals made inside the op at run time reach the caller as fluxlab's own errors.
    with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="outside this model's allowed set"):
        torch.compile(lambda q: fluxlab.attention(q, q, q, backend="sdpa", allowed={"reference"}), fullgraph=True,
                      backend="aot_eager")(q)


@pytest.mark.slow
def test_the_compile_benchmark_dry_run_writes_its_rows(tmp_path):
    """benchmarks/flux2_compile.py's code path on the tiny transformer (the GPU run measures [dev])."""
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "flux2_compile.py"
    spec = importlib.util.spec_from_file_location("flux2_compile", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = ["diffusers_native_eager", "diffusers_native_compiled", "fluxlab_auto_compiled"]
    assert bench.main(["--tiny", "--compile-backend", "aot_eager", "--sizes", "64", "--warmup", "0", "--rounds", "2",
                       "--calls", "1", "--profile", "fluxlab_auto_compiled", "--rows", *rows,
                       "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "flux2_compile.json").read_text())
    block = results["sizes"]["64"]
    assert [row["row"] for row in block["rows"]] == rows
    compiled = [row for row in block["rows"] if row["mode"] == "compiled"]
    assert all(row["graph_breaks"] == 0 and row["graphs_compiled"] == 2 for row in compiled)
    assert all(row["rel_l2_vs_diffusers_native_eager"] == 0.0 for row in block["rows"])  # aot_eager: same kernels
    assert block["targets"]["fluxlab_compiled_vs_diffusers_compiled"] > 0
    assert results["provenance"]["versions"]["diffusers"].startswith("0.42.")
    assert "fluxlab_auto_compiled" in (tmp_path / "flux2_compile.md").read_text()
    # Interleaved timing: every row timed in every round, and switching rows reused the compiled graphs.
    assert all(len(row["ms"]) == 2 and row["ms_min"] <= row["ms_median"] for row in block["rows"])
    assert all(row["graphs_compiled_while_timing"] == 0 for row in block["rows"])
    assert list(block["profiles"]) == ["fluxlab_auto_compiled"]
    assert block["profiles"]["fluxlab_auto_compiled"]["wall_ms"] > 0


def test_route_tokens_name_their_layer_by_address_and_keep_the_op_out_of_cuda_graphs():
    """The compiled op finds a layer from its token's address (no device read); a token fluxlab did not place is
    read by value; the op carries inductor's cudagraph_unsafe tag (a captured graph would freeze the kernel)."""
    from fluxlab.models import router as ops

    token = ops.route_token(7, 3, "cpu")
    assert ops._route_of(token) == (7, 3)
    stranger = torch.tensor([5, 2], dtype=torch.int64)  # same values a token could have, never registered
    assert ops._route_of(stranger) == (5, 2)
    address = token.data_ptr()
    del token
    ops.route_token(1, 0, "cpu")  # registering prunes tokens that are gone
    assert address not in ops._tokens or ops._tokens[address][2]() is not None
    if hasattr(torch.Tag, "cudagraph_unsafe"):
        assert torch.Tag.cudagraph_unsafe in torch.ops.fluxlab.flux2_attention.default.tags


def test_attached_routes_follow_the_inputs_device():
    """Tokens start on the transformer's device and move with the inputs (the attach hook places them)."""
    from fluxlab.models.attach import state_of

    pipe = fluxlab.load_flux2("tiny")
    state = state_of(pipe)
    assert {route.token.device.type for route in state.routes.values()} == {"cpu"}
    state.place_tokens(torch.device("meta"))  # stand-in for "elsewhere": the next forward brings them back
    assert all(route.token.device.type == "meta" for route in state.routes.values())
    generate(pipe)
    assert {route.token.device.type for route in state.routes.values()} == {"cpu"}
    assert state.token_device == torch.device("cpu")
