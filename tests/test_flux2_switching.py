"""Switching backends between generations with no reload, and hybrid per-step / per-layer schedules."""

from __future__ import annotations

import pytest

import diffusers  # noqa: E402,F401

import fluxlab  # noqa: E402
from fluxlab.models.tiny import build_tiny_pipeline  # noqa: E402

from _flux2 import attached, generate  # noqa: E402

LAYERS = ["transformer_blocks.0.attn", "transformer_blocks.1.attn",
          "single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]


@pytest.fixture(scope="module", params=("dev", "klein"))
def pipe(request):
    return build_tiny_pipeline(request.param)


def _ran(pipe, steps=2):
    with fluxlab.capture(pipe, to="meta") as cap:
        generate(pipe, steps=steps)
    return cap


def test_set_backend_switches_between_generations_without_reload(pipe):
    with attached(pipe, backend="sdpa"):
        transformer = pipe.transformer
        assert set(_ran(pipe).backends_used()) == {"sdpa"}
        fluxlab.set_backend(pipe, "reference")
        assert set(_ran(pipe).backends_used()) == {"reference"}
        fluxlab.set_backend(pipe, None)  # back to the global choice
        with fluxlab.use_backend("sdpa_math"):
            assert set(_ran(pipe).backends_used()) == {"sdpa_math"}
        assert pipe.transformer is transformer


def test_per_pipeline_backend_beats_the_global_one(pipe):
    with attached(pipe, backend="reference"), fluxlab.use_backend("sdpa"):
        assert set(_ran(pipe).backends_used()) == {"reference"}


def test_exact_ends_schedule_assigns_backends_per_step(pipe):
    """The serving-framework hybrid: an exact kernel on the first and last steps, another in between."""
    with attached(pipe, backend="sdpa"):
        fluxlab.set_schedule(pipe, fluxlab.Schedule.exact_ends("reference", "sdpa_math"))
        cap = _ran(pipe, steps=4)
    by_step = {}
    for record in cap:
        by_step.setdefault(record.step, set()).add(record.backend)
    assert by_step == {0: {"reference"}, 1: {"sdpa_math"}, 2: {"sdpa_math"}, 3: {"reference"}}


def test_a_function_schedule_sees_layer_step_and_step_count(pipe):
    seen = []

    def schedule(layer, step, num_steps):
        seen.append((layer, step, num_steps))
        return "reference" if step in (0, num_steps - 1) else None  # None: the pipeline's backend

    with attached(pipe, backend="sdpa"):
        fluxlab.set_schedule(pipe, schedule)
        cap = _ran(pipe, steps=3)
    assert {(r.step, r.backend) for r in cap} == {(0, "reference"), (1, "sdpa"), (2, "reference")}
    assert {layer for layer, _, _ in seen} == set(LAYERS)
    assert {n for _, _, n in seen} == {3}


def test_per_layer_schedule(pipe):
    with attached(pipe, backend="sdpa"):
        fluxlab.set_schedule(pipe, fluxlab.Schedule.by_layer({"single_transformer_blocks.*": "reference"}))
        cap = _ran(pipe, steps=1)
        fluxlab.set_schedule(pipe, None)
        after = _ran(pipe, steps=1)
    assert {(r.layer, r.backend) for r in cap} == {
        (name, "reference" if name.startswith("single") else "sdpa") for name in LAYERS}
    assert after.backends_used() == {"sdpa": len(after)}


def test_klein_cfg_branches_share_the_step(pipe):
    with attached(pipe, backend="sdpa"):
        cap = _ran(pipe, steps=2)
    branches = {(r.step, r.branch) for r in cap}
    if pipe.transformer.config.guidance_embeds:  # [dev]: guidance is embedded, one pass per step
        assert branches == {(0, None), (1, None)}
    else:  # [klein]: conditional then unconditional pass per step
        assert branches == {(0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond")}


def test_schedule_backends_outside_the_set_are_refused_when_set(pipe):
    with attached(pipe, allowed={"sdpa", "reference"}):
        with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="sdpa_math"):
            fluxlab.set_schedule(pipe, fluxlab.Schedule.exact_ends("reference", "sdpa_math"))
        with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="sdpa_math"):
            fluxlab.set_backend(pipe, "sdpa_math")
        with pytest.raises(ValueError, match="single_transformer_blocks.0.attn"):
            fluxlab.set_schedule(pipe, fluxlab.Schedule.by_layer({"decoder.*": "sdpa"}))
        fluxlab.set_schedule(pipe, lambda layer, step, n: "sdpa_math")  # a function is checked per call
        with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="sdpa_math"):
            generate(pipe, steps=1)
