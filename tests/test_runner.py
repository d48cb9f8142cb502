"""The one pipeline runner every tool generates through, on the real tiny FLUX.2 pipeline: the noise depends on the
seed only, latents and step times per step, attention calls counted per backend, the pipeline's settings come back,
and Cancel either discards the run or keeps its partial output."""

from __future__ import annotations

import pytest
import torch

import fluxlab
from fluxlab.models.attach import state_of
from fluxlab.models.progress import GenerationCancelled, StepControl
from fluxlab.models.runner import run
from fluxlab.models.schedule import Schedule

SMALL = dict(prompt="a red circle", height=32, width=32, max_sequence_length=16)


@pytest.fixture(scope="module")
def pipe():
    pipe = fluxlab.load_flux2("tiny", flux2_variant="dev")
    yield pipe
    fluxlab.detach(pipe)


def test_a_run_collects_latents_times_and_calls_and_puts_the_pipeline_back(pipe):
    state = state_of(pipe)
    state.backend, state.schedule = "sdpa", None
    control, seen = StepControl(), []
    control.listen(lambda done, total: seen.append(done))
    control.start(3)
    first = run(pipe, seed=5, steps=3, latents=True, backend="reference", schedule=Schedule(default="reference"),
                control=control, calls=True, **SMALL)
    assert len(first.latents) == 3 and len(first.steps_s) == 3 and not first.interrupted
    assert first.image.shape == (32, 32, 3) and first.total_s >= sum(first.steps_s) > 0
    assert set(first.calls) == {"reference"} and first.calls["reference"] > 0
    assert seen == [0, 1, 2, 3]
    assert (state.backend, state.schedule) == ("sdpa", None)  # the model's own settings came back
    again = run(pipe, seed=5, steps=3, latents=True, output="latent", transformer_time=True, **SMALL)
    same = run(pipe, seed=5, steps=3, latents=True, output="latent", **SMALL)
    other = run(pipe, seed=6, steps=3, latents=True, output="latent", **SMALL)
    assert again.image is None and again.transformer_s > 0 and other.transformer_s is None
    assert torch.equal(again.final, same.final) and not torch.equal(again.final, other.final)  # noise from the seed


def test_cancel_discards_the_run_or_keeps_its_partial_output(pipe):
    control = StepControl()
    control.listen(lambda done, total: control.cancel() if done == 1 else None)
    control.start(3)
    with pytest.raises(GenerationCancelled, match="cancelled after 1 of 3 steps"):
        run(pipe, seed=0, steps=3, control=control, **SMALL)
    control.start(3)
    partial = run(pipe, seed=0, steps=3, output="pil", control=control, partial=True, **SMALL)
    assert partial.interrupted and partial.completed == 1 and partial.image.size == (32, 32)

    def ctrl_c_in_the_first_step_hook(step):
        if step == 0:
            raise KeyboardInterrupt

    stopped = run(pipe, seed=0, steps=3, partial=True, on_step=ctrl_c_in_the_first_step_hook, **SMALL)
    assert stopped.interrupted and stopped.completed == 1
