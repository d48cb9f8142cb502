"""fluxlab.attach routes every FLUX.2 attention call through fluxlab.attention, and detach undoes it exactly.

Tolerance for `reference` vs `sdpa` (float32 tiny pipelines, images in [0, 1]): `reference` computes attention in
float64 and rounds once; float32 SDPA differs from it by ~1e-7 relative per call, and 4 blocks x 2 steps plus the
VAE keep the image within rel-L2 1e-5 (measured ~1e-6, max |diff| ~2e-6). A scale off by 2x moves the image by
rel-L2 ~2.7e-3 (measured), two orders of magnitude beyond that tolerance: routing is proven by the difference.
"""

from __future__ import annotations

import gc
import types

import numpy as np

import pytest
import torch

import diffusers  # noqa: E402

import fluxlab  # noqa: E402
from fluxlab.backends.sdpa import _sdpa  # noqa: E402
from fluxlab.models import router  # noqa: E402
from fluxlab.errors import UnsupportedAttentionCallError  # noqa: E402
from fluxlab.models.tiny import build_tiny_pipeline  # noqa: E402

from _flux2 import attached, generate, rel_l2  # noqa: E402

REFERENCE_REL_L2 = 1e-5
WRONG_SCALE_MIN_REL_L2 = 1e-3


@pytest.fixture(scope="module", params=("dev", "klein"))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(variant):
    pipe = build_tiny_pipeline(variant)
    pipe.transformer.set_attention_backend("native")  # diffusers' own default, named explicitly
    return pipe


@pytest.fixture(scope="module")
def native(pipe):
    return generate(pipe)


def _dispatch_modules():
    # Pipelines that earlier test modules dropped without detaching release the router when collected.
    gc.collect()
    from diffusers.models import attention_dispatch
    from diffusers.models.transformers import transformer_flux2

    return transformer_flux2, attention_dispatch


def test_the_name_fluxlab_swaps_is_diffusers_dispatcher():
    """The pinned diffusers fact the router relies on (diffusers>=0.42.1,<0.43)."""
    tf2, dispatch = _dispatch_modules()
    assert tf2.dispatch_attention_fn is dispatch.dispatch_attention_fn
    assert diffusers.__version__.startswith("0.42.")


def test_sdpa_is_bit_identical_to_native_and_detach_restores(pipe, native):
    tf2, dispatch = _dispatch_modules()
    with attached(pipe, backend="sdpa"):
        assert tf2.dispatch_attention_fn is router.router
        routed = generate(pipe)
    assert np.array_equal(routed, native)
    assert tf2.dispatch_attention_fn is dispatch.dispatch_attention_fn
    assert np.array_equal(generate(pipe), native)


def test_reference_agrees_within_tolerance(pipe, native):
    with attached(pipe, backend="reference"):
        routed = generate(pipe)
    assert not np.array_equal(routed, native)  # a different kernel really ran
    assert rel_l2(routed, native) < REFERENCE_REL_L2


@pytest.fixture
def wrong_scale():
    def kernel(q, k, v, *, scale, causal=False, return_lse=False):
        return _sdpa(q, k, v, scale=2 * scale, causal=causal, return_lse=False)

    fluxlab.register_backend("wrong_scale", kernel, description="SDPA at twice the softmax scale (test)")
    try:
        yield "wrong_scale"
    finally:
        fluxlab.registry.unregister_backend("wrong_scale")


def test_a_wrong_scale_backend_changes_the_image(pipe, native, wrong_scale):
    """Proves the calls really go through fluxlab: a user kernel registered through the public API is used."""
    with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="FLUX2_BACKENDS"):
        fluxlab.attach(pipe, backend=wrong_scale, allowed=fluxlab.models.FLUX2_BACKENDS)  # a narrowed set refuses it
    with attached(pipe, backend=wrong_scale):  # the default set takes every backend FLUX.2 may use
        routed = generate(pipe)
    assert rel_l2(routed, native) > WRONG_SCALE_MIN_REL_L2


def test_other_models_are_untouched(pipe, native, variant, wrong_scale):
    """The router is process-wide, routing is per model: an unattached twin stays bit-identical to native."""
    twin = build_tiny_pipeline(variant)
    with attached(pipe, backend=wrong_scale, allowed={wrong_scale}):
        assert np.array_equal(generate(twin), native)


def test_global_use_backend_applies_within_the_allowed_set(pipe, native):
    with attached(pipe, allowed={"sdpa", "reference"}):
        with fluxlab.use_backend("reference"):
            with fluxlab.capture(pipe, to="meta") as cap:
                generate(pipe, steps=1)
        assert cap.backends_used() == {"reference": len(cap)}
        with fluxlab.use_backend("sdpa_math"), pytest.raises(fluxlab.errors.BackendNotAllowedError, match="sdpa_math"):
            generate(pipe, steps=1)


def test_klein_kv_pipeline_is_routed_and_identical():
    """Flux2KleinKVPipeline swaps in its own processors and makes S_q != S_k calls; hooks on modules survive."""
    from PIL import Image

    klein = build_tiny_pipeline("klein")
    kv = diffusers.Flux2KleinKVPipeline(**{n: c for n, c in klein.components.items() if n != "is_distilled"})
    kv.set_progress_bar_config(disable=True)
    reference_image = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8"))

    def run():
        return kv(image=reference_image, prompt="a red circle", height=64, width=64, num_inference_steps=3,
                  max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type="np").images

    native = run()
    with attached(kv, backend="sdpa"):
        with fluxlab.capture(kv, to="meta") as cap:
            routed = run()
    assert np.array_equal(routed, native)
    layers = 4
    # step 0 extracts the reference K/V: two calls per layer (text+image over all keys; reference over itself)
    assert sum(r.step == 0 for r in cap) == 2 * layers
    cached = [r for r in cap if r.step > 0]
    assert len(cached) == 2 * layers
    assert all(r.k.shape[1] == r.q.shape[1] + 16 for r in cached)  # 16 cached reference tokens spliced in
    assert cap.backends_used() == {"sdpa": len(cap)}


def test_a_mask_is_refused_not_ignored(pipe):
    mask = torch.ones(1, 64 + 16, dtype=torch.bool)
    with attached(pipe, backend="sdpa"):
        with pytest.raises(UnsupportedAttentionCallError, match="mask"):
            generate(pipe, steps=1, attention_kwargs={"attention_mask": mask})


def test_context_parallel_is_refused(variant):
    from diffusers import ContextParallelConfig

    pipe = build_tiny_pipeline(variant)
    processor = pipe.transformer.transformer_blocks[0].attn.processor
    processor._parallel_config = ContextParallelConfig(ring_degree=2)  # what enable_parallelism sets
    with pytest.raises(UnsupportedAttentionCallError, match="context parallel"):
        fluxlab.attach(pipe)
    processor._parallel_config = None
    with attached(pipe):  # set after attaching: refused at the call instead
        processor._parallel_config = ContextParallelConfig(ring_degree=2)
        with pytest.raises(UnsupportedAttentionCallError, match="context parallel"):
            generate(pipe, steps=1)


def test_dropout_and_diffusers_kwargs_are_refused():
    """No stock FLUX.2 call passes them; the router refuses rather than drop them silently, naming the layer."""
    route = types.SimpleNamespace(layer="single_transformer_blocks.3.attn")
    with pytest.raises(UnsupportedAttentionCallError, match=r"single_transformer_blocks\.3\.attn: .*dropout_p=0.1"):
        router.refuse_unsupported(route, attn_mask=None, dropout_p=0.1, attention_kwargs=None, parallel_config=None)
    with pytest.raises(UnsupportedAttentionCallError, match="window_size"):
        router.refuse_unsupported(route, attn_mask=None, dropout_p=0.0, attention_kwargs={"window_size": 8},
                                  parallel_config=None)
    router.refuse_unsupported(route, attn_mask=None, dropout_p=0.0, attention_kwargs={}, parallel_config=None)
