"""Refusals of the FLUX.2 integration, each with a message that says what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

import diffusers  # noqa: E402,F401

import fluxlab  # noqa: E402
from fluxlab.errors import AttachError  # noqa: E402
from fluxlab.models.tiny import build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline("dev")


def test_import_fluxlab_does_not_import_diffusers():
    code = "import sys, fluxlab; fluxlab.models.FLUX2_BACKENDS; fluxlab.Schedule; print('diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_public_names():
    for name in ("load_flux2", "attach", "detach", "set_backend", "set_schedule", "Schedule", "capture"):
        assert name in fluxlab.__all__ and getattr(fluxlab, name) is not None
    assert "FLUX2_BACKENDS" not in fluxlab.__all__ and fluxlab.models.FLUX2_BACKENDS


def test_flux2_set_covers_the_seed_and_every_builtin():
    """The seed set, every built-in kernel, and the priority groups (``fa``: no kernel of its own)."""
    from fluxlab.registry import GROUPS
    from fluxlab.registry import all_backends

    assert {"sdpa", "fa", "aiter", "aiter_sage"} <= fluxlab.models.FLUX2_BACKENDS
    assert fluxlab.models.FLUX2_BACKENDS == {b.name for b in all_backends() if b.builtin} | set(GROUPS)


def test_attaching_twice(pipe):
    fluxlab.attach(pipe)
    try:
        message = r"already attached to this FLUX.2 model; call fluxlab.detach\(pipe\) first, or use fluxlab.set_backend"
        with pytest.raises(AttachError, match=message):
            fluxlab.attach(pipe.transformer)  # the same model through its transformer
    finally:
        fluxlab.detach(pipe)
    with pytest.raises(AttachError, match="not attached"):
        fluxlab.detach(pipe)
    with pytest.raises(AttachError, match=r"fluxlab.attach\(pipe\)"):
        fluxlab.set_backend(pipe, "sdpa")


def test_backend_outside_the_model_set_is_refused_at_attach(pipe):
    with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="outside this FLUX.2 model's allowed set.*widen|Widen"):
        fluxlab.attach(pipe, backend="reference", allowed={"sdpa"})
    assert not fluxlab.models.attach.is_attached(pipe)  # nothing left half-attached


def test_allowed_set_names_must_exist(pipe):
    with pytest.raises(fluxlab.errors.UnknownBackendError, match="my_kernel"):
        fluxlab.attach(pipe, allowed=fluxlab.models.FLUX2_BACKENDS | {"my_kernel"})  # not registered yet
    with pytest.raises(ValueError, match="allowed= is empty"):
        fluxlab.attach(pipe, allowed=set())


def test_a_user_backend_can_be_allowed(pipe):
    from fluxlab.backends.sdpa import _sdpa

    from _flux2 import attached, generate

    with attached(pipe):  # attached (as load_flux2 does) before the kernel exists
        fluxlab.register_backend("my_kernel", lambda q, k, v, *, scale, causal=False, return_lse=False:
                                 _sdpa(q, k, v, scale=scale, causal=causal, return_lse=False))
        try:
            fluxlab.set_backend(pipe, "my_kernel")  # no re-attach: the default set follows the registry
            with fluxlab.capture(pipe, to="meta") as cap:
                generate(pipe, steps=1)
            assert cap.backends_used() == {"my_kernel": 4}
        finally:
            fluxlab.set_backend(pipe, None)
            fluxlab.registry.unregister_backend("my_kernel")
        assert "my_kernel" not in fluxlab.models.attach.state_of(pipe).allowed
    with attached(pipe, allowed=fluxlab.models.FLUX2_BACKENDS):  # a set the user narrowed keeps refusing it
        fluxlab.register_backend("my_kernel", lambda q, k, v, *, scale, causal=False, return_lse=False: q)
        try:
            with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="my_kernel"):
                fluxlab.set_backend(pipe, "my_kernel")
        finally:
            fluxlab.registry.unregister_backend("my_kernel")


def test_not_a_flux2_model():
    with pytest.raises(TypeError, match="expected a FLUX.2 pipeline"):
        fluxlab.attach(object())
