"""autotune's step-level confirmation on the embedded model (CPU): the real step runs under every variant; the
clock is scripted (an injected timer), so which variant wins is decided by the test, never by this machine's speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fluxlab
from fluxlab.decide import AutotuneResult, DecideInputError, autotune, confirm_plan, record_step
from fluxlab.models.attach import state_of

PROMPT = "a red circle at the top left on a blue background"
FAST = {"max_sequence_length": 32}
PLANTED = "confirm_scale_bug"  # sdpa with the softmax scale 10 % too large: fails every layer's verdict
STEADY = "confirm_steady"  # exact, but sleeps: never the per-layer choice next to sdpa
CALLS = {STEADY: 0}
H200_PLAN = Path(__file__).resolve().parents[1] / "benchmarks/results/h200/decide/autotune_plan_1024.json"


def _scale_bug(q, k, v, *, scale, causal=False, return_lse=False, **options):
    return fluxlab.attention(q, k, v, backend="sdpa", scale=scale * 1.1, causal=causal, return_lse=return_lse)


def _steady(q, k, v, *, scale, causal=False, return_lse=False, **options):
    import time

    CALLS[STEADY] += 1
    time.sleep(0.03)  # far slower per call than sdpa at these sizes: sdpa wins every layer in isolation
    return fluxlab.attention(q, k, v, backend="sdpa_math", scale=scale, causal=causal, return_lse=return_lse)


@pytest.fixture(scope="module")
def pipe():
    fluxlab.register_backend(PLANTED, _scale_bug, replace=True, description="planted: softmax scale x1.1")
    fluxlab.register_backend(STEADY, _steady, replace=True, description="exact but slow")
    pipeline = fluxlab.load_flux2("embedded", allowed={"sdpa", "sdpa_math", "reference", PLANTED, STEADY})
    yield pipeline
    fluxlab.detach(pipeline)
    fluxlab.registry.unregister_backend(PLANTED)
    fluxlab.registry.unregister_backend(STEADY)


class ScriptedClock:
    """A timer that runs the real step and returns a scripted time for the variant's kernels; it also records how
    many STEADY calls each run made (proof that the step really ran under the variant's schedule)."""

    def __init__(self, script):
        self.script = script  # kernels (backend -> layers) -> ms
        self.steady_calls: dict[str, list[int]] = {}

    def __call__(self, variant, run):
        before = CALLS[STEADY]
        run()
        self.steady_calls.setdefault(variant.variant, []).append(CALLS[STEADY] - before)
        return self.script(variant.kernels)


def test_a_per_layer_plan_slower_at_step_level_than_a_uniform_candidate_is_replaced(pipe, tmp_path):
    layers = state_of(pipe).layer_names
    # The scripted step: STEADY on every layer is the fastest whole step, although it loses every layer alone.
    clock = ScriptedClock(lambda kernels: 4.0 if kernels == {STEADY: len(layers)} else 10.0)
    plan = autotune(pipe, candidates=["sdpa", STEADY, PLANTED], prompt=PROMPT, steps=3, repeats=1,
                    confirm_rounds=3, timer=clock, **FAST)
    confirmation = plan.confirmation
    assert set(confirmation.per_layer_choices.values()) == {"sdpa"}, plan.to_markdown()  # in isolation
    assert plan.choices == {layer: STEADY for layer in layers}
    assert plan.schedule(layers[0], 1, 3) == STEADY
    assert confirmation.kept == f"uniform {STEADY}"
    assert "step-level confirmation" in plan.reasons["sdpa"] and STEADY not in plan.reasons
    assert any("instead of the per-layer plan" in note for note in plan.notes)
    # every variant timed the same number of times; the failing kernel is never a variant
    variants = {t.variant: t for t in confirmation.timings}
    assert set(variants) == {"per-layer plan", f"uniform {STEADY}"}
    assert set(variants["per-layer plan"].same_as) == {"automatic pick", "uniform sdpa"}
    assert all(len(t.times_ms) == len(t.ratios) == 3 for t in confirmation.timings)
    assert variants[f"uniform {STEADY}"].ratios == [0.4] * 3 and variants["per-layer plan"].ratios == [1.0] * 3
    assert PLANTED not in plan.choices.values() and "yardstick" in plan.reasons[PLANTED]
    # the real step ran under each variant's schedule: STEADY on every layer of every forward, or nowhere
    assert all(n > 0 and n % len(layers) == 0 for n in clock.steady_calls[f"uniform {STEADY}"])
    assert clock.steady_calls["per-layer plan"] == [0] * 3
    text = plan.to_markdown()
    assert f"**uniform {STEADY}** (kept)" in text and "Decision: uniform" in text
    assert f"| {layers[0]} | **{STEADY}** (alone: sdpa) |" in text

    # saved and loaded, the confirmation comes back whole
    loaded = AutotuneResult.load(plan.save(tmp_path / "plan.json"))
    assert loaded.confirmation == confirmation and loaded.choices == plan.choices
    assert loaded.to_markdown() == text
    # a plan saved before the confirmation existed (no "confirmation" key) still loads
    data = json.loads((tmp_path / "plan.json").read_text())
    del data["confirmation"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = AutotuneResult.load(tmp_path / "old.json")
    assert old.confirmation is None and old.choices == plan.choices and "Step-level" not in old.to_markdown()


def test_a_committed_plan_loads_and_one_of_the_old_format_too(tmp_path):
    """The committed H200 plan (with its step-level confirmation) loads; the same plan written before the
    confirmation existed (no such key) loads with confirmation None."""
    plan = AutotuneResult.load(H200_PLAN, allow_mismatch=True)  # measured on an H200: a mismatch here, by design
    assert plan.confirmation is not None and len(plan.choices) == 56 and "Step-level" in plan.to_markdown()
    old = json.loads(H200_PLAN.read_text())
    del old["confirmation"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    plan = AutotuneResult.load(tmp_path / "old.json", allow_mismatch=True)
    assert plan.confirmation is None and len(plan.choices) == 56 and "Step-level" not in plan.to_markdown()


def test_a_faster_automatic_pick_that_fails_its_verdict_is_never_kept(pipe):
    layers = state_of(pipe).layer_names
    fluxlab.set_backend(pipe, PLANTED)  # what runs without a schedule is now a wrong kernel
    try:
        clock = ScriptedClock(lambda kernels: 1.0 if kernels == {PLANTED: len(layers)} else 5.0)
        plan = autotune(pipe, candidates=["sdpa", PLANTED], prompt=PROMPT, steps=3, repeats=1,
                        confirm_rounds=2, timer=clock, **FAST)
    finally:
        fluxlab.set_backend(pipe, None)
    assert set(plan.automatic.values()) == {PLANTED}
    automatic = plan.confirmation.timing("automatic pick")
    assert automatic.ratios == [1.0, 1.0] and not automatic.eligible and "not judged pass" in automatic.note
    assert plan.confirmation.kept == "per-layer plan" and set(plan.choices.values()) == {"sdpa"}
    assert "no: not judged pass" in plan.to_markdown()


def test_confirm_plan_replaces_a_mixed_per_layer_plan_with_the_faster_uniform_one(pipe):
    """The public pieces: record_step keeps a step's inputs; confirm_plan times that step under each variant."""
    layers = state_of(pipe).layer_names
    plan = autotune(pipe, candidates=["sdpa", "sdpa_math"], prompt=PROMPT, steps=3, repeats=1, confirm=False,
                    **FAST)
    assert plan.confirmation is None
    mixed = {layer: ("sdpa_math" if i % 2 else "sdpa") for i, layer in enumerate(layers)}  # both pass everywhere
    plan.choices = dict(mixed)
    with record_step(pipe, -1, 3) as replay:
        pipe(prompt=PROMPT, num_inference_steps=3, output_type="latent", **FAST)
    assert replay.calls  # the last step's forwards (true CFG: one per branch)
    script = {"sdpa_math": 3.0, "sdpa": 5.0}
    clock = ScriptedClock(lambda kernels: script[next(iter(kernels))] if len(kernels) == 1 else 7.0)
    confirmation = confirm_plan(plan, pipe, replay, rounds=3, warmup=0, timer=clock)
    assert confirmation.per_layer_choices == mixed
    assert confirmation.kept == "uniform sdpa_math" and plan.choices == {layer: "sdpa_math" for layer in layers}
    assert confirmation.timing("per-layer plan").ratios == [1.4] * 3
    assert "sdpa" in plan.reasons and state_of(pipe).schedule is None  # the model's own schedule is back


def test_bad_confirmation_settings_are_refused(pipe):
    with pytest.raises(DecideInputError, match="confirm_rounds=0"):
        autotune(pipe, candidates=["sdpa"], prompt=PROMPT, steps=3, confirm_rounds=0)
    with pytest.raises(DecideInputError, match="timer returned -1"):
        autotune(pipe, candidates=["sdpa", "sdpa_math"], prompt=PROMPT, steps=3, repeats=1,
                 timer=lambda variant, run: -1, **FAST)


def test_the_automatic_pick_gives_way_only_to_a_variant_faster_in_every_round():
    """A lower median is not enough to leave the automatic pick: the variant must win every round (the H200's
    1024² step wandered by a few % between rounds, and a median-only choice was reversed by a fresh measurement)."""
    from fluxlab.decide.confirm import StepTiming, _winner

    automatic = StepTiming("automatic pick", {"fa4": 56}, ratios=[1.0] * 5)
    noisy = StepTiming("uniform sdpa_cudnn", {"sdpa_cudnn": 56}, ratios=[0.95, 0.99, 0.97, 1.02, 0.98])
    assert _winner([automatic, noisy], automatic) is automatic  # lower median, but slower in one round
    steady = StepTiming("uniform flex", {"flex": 56}, ratios=[0.99, 0.98, 0.99, 0.99, 0.985])
    assert _winner([automatic, noisy, steady], automatic) is steady
    failing = StepTiming("uniform planted", {"planted": 56}, ratios=[0.5] * 5, eligible=False)
    assert _winner([automatic, failing], automatic) is automatic  # never a variant that failed a verdict
    automatic.eligible = False  # no eligible incumbent: the lowest median among the eligible ones
    assert _winner([automatic, noisy, steady], automatic) is noisy
