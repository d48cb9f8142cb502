"""diffusers' own attention settings meet a fluxlab-attached FLUX.2 model: mapped, warned or refused, never ignored."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend

import fluxlab
from fluxlab.models import interop
from fluxlab.models.interop import DiffusersBackendWarning
from fluxlab.models.tiny import build_tiny_pipeline
from fluxlab.registry import ALIASES, canonical_name

from _flux2 import attached, generate


@pytest.fixture
def pipe():
    pipe = build_tiny_pipeline("dev")
    yield pipe
    if fluxlab.models.attach.is_attached(pipe):
        fluxlab.detach(pipe)
    pipe.transformer.set_attention_backend("native")  # diffusers' setter also changes its process-wide backend


def _processor_backends(pipe) -> set:
    return {getattr(m.processor, "_attention_backend", None) for m in pipe.transformer.modules()
            if hasattr(m, "processor")}


def _backends_used(pipe, steps=1) -> dict[str, int]:
    with fluxlab.capture(pipe, to="meta") as cap:
        generate(pipe, steps=steps)
    return cap.backends_used()


# -- names ----------------------------------------------------------------------------------------------------------


def test_every_diffusers_backend_name_is_known():
    """Each name in diffusers 0.42's enum is mapped, refused as a hub kernel, or refused as having no equivalent."""
    names = {member.value for member in AttentionBackendName}
    tables = (set(interop.SAME_KERNEL), set(interop.HUB_KERNELS), set(interop.NO_EQUIVALENT))
    assert set().union(*tables) == names
    assert sum(map(len, tables)) == len(names)  # no name in two tables


def test_aliases_of_diffusers_names_mean_the_same_kernel_family():
    assert canonical_name("flash") == "fa2"  # diffusers' `flash` is the flash-attn package: FlashAttention-2
    for name, fluxlab_name in interop.SAME_KERNEL.items():
        assert canonical_name(name) == fluxlab_name, name
    for name in set(ALIASES) & {member.value for member in AttentionBackendName}:
        assert ALIASES[name] == interop.SAME_KERNEL[name], name


@pytest.mark.parametrize("name", sorted(interop.HUB_KERNELS))
def test_hub_names_are_refused_naming_the_fluxlab_backend(name, pipe):
    use = interop.HUB_KERNELS[name][0]
    expected = rf"'{name}' is diffusers' Hugging Face Hub build .* Use fluxlab's '{use}'"
    with pytest.raises(fluxlab.errors.UnknownBackendError, match=expected):
        fluxlab.attach(pipe, backend=name)
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(fluxlab.errors.UnknownBackendError, match=expected):
        fluxlab.attention(q, q, q, backend=name)
    with attached(pipe):
        with pytest.raises(fluxlab.errors.UnknownBackendError, match=expected):
            pipe.transformer.set_attention_backend(name)


def test_names_without_a_fluxlab_equivalent_are_refused_naming_the_nearest():
    with pytest.raises(fluxlab.errors.UnknownBackendError, match="nearest fluxlab backend is 'sdpa_efficient'"):
        fluxlab.registry.get_backend("xformers")
    with pytest.raises(fluxlab.errors.UnknownBackendError, match="Ascend NPU"):
        fluxlab.use_backend("_native_npu")


# -- a diffusers setting made before attaching -------------------------------------------------------------------


def test_attach_warns_naming_the_diffusers_backend_and_detach_restores_it(pipe):
    pipe.transformer.set_attention_backend("_native_math")
    with pytest.warns(DiffusersBackendWarning) as caught:
        fluxlab.attach(pipe, backend="sdpa")
    message = str(caught[0].message)
    assert "'_native_math'" in message and "fluxlab runs 'sdpa' instead" in message
    assert "backend='sdpa_math'" in message  # how to keep the diffusers choice, in fluxlab's name
    assert _backends_used(pipe) == {"sdpa": 4}
    fluxlab.detach(pipe)
    assert _processor_backends(pipe) == {AttentionBackendName._NATIVE_MATH}


def test_attach_names_the_automatic_choice_when_no_backend_is_given(pipe):
    pipe.transformer.set_attention_backend("_native_efficient")
    with pytest.warns(DiffusersBackendWarning, match="'_native_efficient'.*automatic choice.*'sdpa_efficient'"):
        fluxlab.attach(pipe)


def test_the_diffusers_default_attaches_silently(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffusersBackendWarning)
        with attached(pipe, backend="sdpa"):
            pass
    pipe.transformer.set_attention_backend("native")  # explicit, but still the default kernel
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffusersBackendWarning)
        with attached(pipe, backend="sdpa"):
            pass


# -- diffusers' setters while attached ---------------------------------------------------------------------------


def test_set_attention_backend_while_attached_routes_through_fluxlab(pipe):
    native = generate(pipe, steps=1)
    with attached(pipe, backend="reference"):
        with pytest.warns(DiffusersBackendWarning, match=r"set_attention_backend\('native'\).*fluxlab now runs 'sdpa'"):
            pipe.transformer.set_attention_backend("native")
        assert _backends_used(pipe) == {"sdpa": 4}
        assert np.array_equal(generate(pipe, steps=1), native)  # fluxlab's sdpa is bit-identical to native
        pipe.transformer.reset_attention_backend()  # mapped silently: the first setter call announced the mapping
        assert fluxlab.models.attach.state_of(pipe).backend is None
    assert "set_attention_backend" not in vars(pipe.transformer)  # diffusers' own setter is back


def test_a_mapped_backend_outside_the_allowed_set_is_refused(pipe):
    with attached(pipe, allowed={"sdpa"}):
        with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="sdpa_math"):
            pipe.transformer.set_attention_backend("_native_math")


def test_a_layer_setter_while_attached_is_warned_and_not_applied(pipe):
    layer = "transformer_blocks.0.attn"
    with attached(pipe, backend="sdpa"):
        with pytest.warns(DiffusersBackendWarning, match=rf"'_native_math'.*{layer}.*Schedule.by_layer"):
            pipe.transformer.get_submodule(layer).set_attention_backend("_native_math")
        assert _backends_used(pipe) == {"sdpa": 4}


def test_set_attention_backend_warns_once_per_model_and_every_call_takes_effect(pipe):
    with attached(pipe):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.transformer.set_attention_backend("_native_math")
            assert _backends_used(pipe) == {"sdpa_math": 4}
            pipe.transformer.set_attention_backend("native")
            assert _backends_used(pipe) == {"sdpa": 4}
            pipe.transformer.reset_attention_backend()
            assert fluxlab.models.attach.state_of(pipe).backend is None
        mine = [str(w.message) for w in caught if issubclass(w.category, DiffusersBackendWarning)]
        assert len(mine) == 1 and "'_native_math'" in mine[0] and "without a warning" in mine[0], mine


def test_the_attention_backend_context_runs_the_same_kernel_through_fluxlab(pipe):
    with attention_backend("_native_math"):
        diffusers_math = generate(pipe, steps=1)  # diffusers' own math kernel, fluxlab not attached
    with attached(pipe):  # no backend of its own: the context chooses, as in diffusers
        automatic = _backends_used(pipe)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DiffusersBackendWarning)  # mapped: nothing to warn about
            with attention_backend("_native_math"):
                assert _backends_used(pipe) == {"sdpa_math": 4}
                through_fluxlab = generate(pipe, steps=1)
        assert _backends_used(pipe) == automatic  # the context left: fluxlab's automatic choice again
        assert "sdpa_math" not in automatic
    np.testing.assert_array_equal(through_fluxlab, diffusers_math)


def test_the_context_is_refused_once_with_the_reason_where_it_cannot_apply(pipe):
    # The model's own backend wins over the context, as a model's set_attention_backend does in diffusers.
    with attached(pipe, backend="sdpa"):
        with attention_backend("_native_math"):
            with pytest.warns(DiffusersBackendWarning, match="'_native_math'.*own backend 'sdpa'.*takes precedence.*"
                                                             r"set_backend\(pipe, None\) lets the context choose "
                                                             "'sdpa_math'"):
                used = _backends_used(pipe)
            with warnings.catch_warnings():
                warnings.simplefilter("error", DiffusersBackendWarning)  # once, not on every call
                assert _backends_used(pipe) == used == {"sdpa": 4}
            fluxlab.set_backend(pipe, None)
            assert _backends_used(pipe) == {"sdpa_math": 4}
    # A mapped kernel outside the model's allowed set: refused, naming the set and how to widen it.
    with attached(pipe, allowed={"sdpa"}):
        with attention_backend("_native_math"):
            with pytest.warns(DiffusersBackendWarning, match="'sdpa_math' is outside this model's allowed set"):
                assert _backends_used(pipe) == {"sdpa": 4}
            with warnings.catch_warnings():
                warnings.simplefilter("error", DiffusersBackendWarning)
                assert _backends_used(pipe) == {"sdpa": 4}


# -- routes follow processors --------------------------------------------------------------------------------------


def test_processors_set_after_attaching_are_routed_per_layer(pipe):
    from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor

    native = generate(pipe, steps=1)
    with attached(pipe, backend="sdpa"):
        shared = Flux2AttnProcessor()  # one object for both double blocks: each layer still gets its own route
        for block in pipe.transformer.transformer_blocks:
            block.attn.set_processor(shared)
        with fluxlab.capture(pipe, to="meta") as cap:
            routed = generate(pipe, steps=1)
        assert sorted(r.layer for r in cap) == sorted(fluxlab.models.attach.state_of(pipe).layer_names)
    assert np.array_equal(routed, native)
    assert _processor_backends(pipe) == {None}
