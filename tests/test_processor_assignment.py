"""A processor assigned plainly (``attn.processor = p``) to a fluxlab-attached FLUX.2 model is never silently outside
fluxlab: at the next forward it is routed like ``set_processor`` (warned once), or, if it cannot be, warned about."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch._dynamo

import fluxlab
from fluxlab.models.attach import state_of
from fluxlab.models.interop import DiffusersBackendWarning

from _flux2 import generate

LAYER = "transformer_blocks.0.attn"  # a double-stream block: diffusers' Flux2AttnProcessor


@pytest.fixture
def pipe():
    pipe = fluxlab.load_flux2("tiny", backend="sdpa")
    yield pipe
    if fluxlab.models.attach.is_attached(pipe):
        fluxlab.detach(pipe)


def layers_served(pipe) -> collections.Counter:
    """How many attention calls of each layer fluxlab served in a one-step generation."""
    with fluxlab.capture(pipe, to="meta") as cap:
        generate(pipe, steps=1)
    return collections.Counter(record.layer for record in cap)


def no_interop_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffusersBackendWarning)
        return fn()


class OwnAttention:
    """A user's processor that runs attention itself: no ``_attention_backend``, so nothing fluxlab can route."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        self.calls += 1
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def test_a_plain_assignment_of_a_diffusers_processor_is_routed_with_one_warning(pipe):
    state = state_of(pipe)
    before = layers_served(pipe)
    assert set(before) == set(state.layer_names)
    eager = generate(pipe)
    attn = pipe.transformer.get_submodule(LAYER)
    fresh = type(attn.processor)()
    fresh._attention_backend = "_native_math"  # a diffusers choice the user gave the new processor
    attn.processor = fresh  # not set_processor: nothing fluxlab shadows sees this
    with pytest.warns(DiffusersBackendWarning) as warned:
        served = layers_served(pipe)
    (message,) = [str(w.message) for w in warned if LAYER in str(w.message)]
    assert "processor assigned directly (attn.processor = Flux2AttnProcessor(...))" in message
    assert "fluxlab routes it as attn.set_processor(...) would" in message
    assert "The diffusers backend it carried (_native_math) is not used while attached" in message
    assert served == before and fresh._attention_backend is state.routes[LAYER]
    assert np.array_equal(no_interop_warning(lambda: generate(pipe)), eager)  # once: routed now, same kernel
    fluxlab.detach(pipe)
    assert fresh._attention_backend == "_native_math"  # detach gives the user's processor its setting back


def test_a_processor_fluxlab_cannot_route_is_named_once_and_runs_its_own_code(pipe):
    attn = pipe.transformer.get_submodule(LAYER)
    own = OwnAttention(type(attn.processor)())  # its inner processor runs diffusers' own attention
    attn.processor = own
    with pytest.warns(DiffusersBackendWarning) as warned:
        served = layers_served(pipe)
    (message,) = [str(w.message) for w in warned if LAYER in str(w.message)]
    assert "attn.processor = OwnAttention(...)" in message and "has no _attention_backend" in message
    assert "fluxlab no longer handles that attention" in message and "attn.set_processor(...)" in message
    assert LAYER not in served and own.calls == 1  # the user's processor ran, fluxlab did not see the call
    assert set(served) == set(state_of(pipe).layer_names) - {LAYER}
    no_interop_warning(lambda: layers_served(pipe))  # told once, not at every forward
    assert own.calls == 2
    fluxlab.detach(pipe)
    assert attn.processor is own  # detach leaves the user's processor where they put it


def test_set_processor_and_an_unchanged_processor_raise_no_warning(pipe):
    attn = pipe.transformer.get_submodule(LAYER)
    attn.processor = attn.processor  # the same object: still routed
    attn.set_processor(type(attn.processor)())  # diffusers' setter: routed at once, as before
    served = no_interop_warning(lambda: layers_served(pipe))
    assert set(served) == set(state_of(pipe).layer_names)


def test_a_plain_assignment_is_found_under_regional_compile(pipe):
    """compile_repeated_blocks compiles the blocks; the transformer's forward, where the check runs, stays eager."""
    torch._dynamo.reset()
    try:
        eager = generate(pipe)
        pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
        attn = pipe.transformer.get_submodule(LAYER)
        attn.processor = type(attn.processor)()
        with pytest.warns(DiffusersBackendWarning, match=f"{LAYER}: processor assigned directly"):
            compiled = generate(pipe)
        assert np.array_equal(compiled, eager)  # aot_eager runs the same kernels
        assert set(layers_served(pipe)) == set(state_of(pipe).layer_names)
    finally:
        torch._dynamo.reset()
