"""fluxlab.decide on the embedded model (CPU): image verdicts, drift localisation, frontier, verdict-gated autotune."""

from __future__ import annotations

import math

import pytest

import fluxlab
from fluxlab import Schedule
from fluxlab.models import Rule
from fluxlab.compare import IMAGE_RULE_TEXT, compare_images
from fluxlab.decide import DecideInputError, generation_bound, locate_drift

PROMPT = "a red circle at the top left on a blue background"
STEPS = 4
# A short text sequence keeps each generation well under a second on one core; the model still sees a real prompt.
FAST = {"max_sequence_length": 32}
PLANTED = "decide_scale_bug"  # sdpa with the softmax scale 10 % too large: plausible images, wrong latents
SLOW_CORRECT = "decide_slow_correct"  # exact, but sleeps: autotune must take it over a fast wrong kernel


def _scale_bug(q, k, v, *, scale, causal=False, return_lse=False, **options):
    return fluxlab.attention(q, k, v, backend="sdpa", scale=scale * 1.1, causal=causal, return_lse=return_lse)


def _slow_correct(q, k, v, *, scale, causal=False, return_lse=False, **options):
    import time

    time.sleep(0.02)  # 20 ms a call: far slower than sdpa at these sizes
    return fluxlab.attention(q, k, v, backend="sdpa_math", scale=scale, causal=causal, return_lse=return_lse)


@pytest.fixture(scope="module")
def pipe():
    fluxlab.register_backend(PLANTED, _scale_bug, replace=True, description="planted: softmax scale x1.1")
    fluxlab.register_backend(SLOW_CORRECT, _slow_correct, replace=True, description="exact but slow")
    allowed = {"sdpa", "sdpa_math", "reference", "flex", PLANTED, SLOW_CORRECT}
    pipeline = fluxlab.load_flux2("embedded", allowed=allowed)
    yield pipeline
    fluxlab.detach(pipeline)
    fluxlab.registry.unregister_backend(PLANTED)
    fluxlab.registry.unregister_backend(SLOW_CORRECT)


class ForwardCounter:
    """Counts transformer forwards independently of locate_drift's own count (2 per step: true CFG)."""

    def __init__(self, pipeline):
        self.forwards = 0
        self.handle = pipeline.transformer.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.forwards += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- image verdicts ------------------------------------------------------------------------------------------------


def test_image_verdicts_identical_pass_planted_fails(pipe):
    result = compare_images(pipe, ["sdpa", "sdpa", "flex", PLANTED], prompt=PROMPT, steps=3, seeds=(0, 1), **FAST)
    verdicts = result.verdicts
    assert verdicts["sdpa"] == "pass" and verdicts["sdpa#2"] == "pass"
    assert verdicts["flex"] == "pass", result.metrics["flex"].verdict_note
    assert verdicts[PLANTED] == "fail", result.metrics[PLANTED].verdict_note
    # the exact-kernel spread was measured (sdpa vs sdpa_math vs float64), and it is rounding-sized on CPU fp32
    assert 0 < result.spread < 1e-4
    planted = result.metrics[PLANTED]
    assert planted.seeds == [0, 1] and planted.final_latent_rel_l2_worst >= planted.final_latent_rel_l2 > 0
    assert "| verdict |" in result.to_markdown()


def test_quantised_kernel_is_judged_in_bands_of_the_committed_low_precision_band(pipe):
    from fluxlab.compare.bands import LOW_PRECISION, default_band, from_image_metrics, judge_with_band, setting_of

    # The planted bug's image metrics, judged as if it were a quantised kernel, by the committed band of this
    # setting (benchmarks/results/cpu/image_bands.json: 4 steps, 64x64, 32 text tokens)
    result = compare_images(pipe, ["sdpa", PLANTED], prompt=PROMPT, steps=STEPS, yardstick=False, **FAST)
    band = default_band(setting_of(pipe, steps=STEPS, height=64, width=64, pipe_kwargs=FAST))
    assert band is not None, "no committed band for the embedded model at 4 steps, 64x64, 32 text tokens"
    row = result.metrics[PLANTED]
    verdict, note = judge_with_band(from_image_metrics(row.ssim_worst, row.psnr_worst,
                                                       row.final_latent_rel_l2_worst), band, LOW_PRECISION)
    assert verdict == "fail", note
    assert "bands" in note and "image_bands.json" in note
    assert "bands" in IMAGE_RULE_TEXT and "spread" in IMAGE_RULE_TEXT


# -- locate_drift --------------------------------------------------------------------------------------------------

PLACEMENTS = [
    ("transformer_blocks.1.attn", (1, 2)),  # a double-stream block, middle steps
    ("single_transformer_blocks.2.attn", (1, 2)),  # a single-stream block
    ("transformer_blocks.0.attn", (0, 1)),  # the first step
    ("single_transformer_blocks.3.attn", (2, 3)),  # the last step
]


@pytest.mark.slow
@pytest.mark.parametrize("layer,steps", PLACEMENTS)
def test_locate_drift_names_the_planted_layer_and_steps_first(pipe, layer, steps):
    bad = Schedule(default="sdpa", rules=[Rule(PLANTED, layers=(layer,), steps=steps)])
    with ForwardCounter(pipe) as counter:
        drift = locate_drift(pipe, "sdpa", bad, prompt=PROMPT, steps=STEPS, **FAST)
    first_two = drift.culprits[:2]
    assert all(c.layer == layer and len(c.steps) == 1 for c in first_two), drift.to_markdown()
    assert {c.steps[0] for c in first_two} == set(steps), drift.to_markdown()
    assert all(c.contribution > 0 for c in first_two)
    assert all(c.contribution == 0 for c in drift.culprits[2:]), "drift outside the planted cells"
    # counted, not timed: every generation is 2 forwards per step (true CFG), and the bound holds
    assert counter.forwards == drift.generations * STEPS * 2
    assert drift.generations <= drift.bound == generation_bound(8, STEPS)
    assert drift.localised and drift.complete
    row = drift.layers.index(layer)
    assert all(drift.grid[row, s] > 0 for s in steps)
    assert math.isnan(drift.grid[(row + 1) % 8, 0]), "cells never split must be NaN"


@pytest.mark.slow
def test_diffuse_drift_stays_within_the_bound_and_a_small_budget_says_so(pipe):
    with ForwardCounter(pipe) as counter:
        drift = locate_drift(pipe, "sdpa", PLANTED, prompt=PROMPT, steps=STEPS, **FAST)
    assert counter.forwards == drift.generations * STEPS * 2
    assert drift.generations <= generation_bound(8, STEPS, beam=2)
    assert drift.all_bad_drift > 0 and drift.culprits
    small = locate_drift(pipe, "sdpa", PLANTED, prompt=PROMPT, steps=STEPS, budget=4, **FAST)
    assert small.generations <= 4 and not small.complete
    assert "too small to split further" in small.note and "too small" in small.to_markdown()


def test_bad_arguments_are_refused_before_any_generation(pipe):
    with ForwardCounter(pipe) as counter:
        with pytest.raises(fluxlab.errors.UnknownBackendError, match="sdpx"):
            locate_drift(pipe, "sdpa", "sdpx", prompt=PROMPT, steps=STEPS)
        with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="allowed"):
            locate_drift(pipe, "sdpa", "sdpa_flash", prompt=PROMPT, steps=STEPS)
        with pytest.raises(DecideInputError, match="layer patterns"):
            locate_drift(pipe, "sdpa", Schedule(rules=[Rule(PLANTED, layers=("nope.*",))]), prompt=PROMPT,
                         steps=STEPS)
        with pytest.raises(DecideInputError, match="at least 2 denoising steps"):
            locate_drift(pipe, "sdpa", PLANTED, prompt=PROMPT, steps=1)
        with pytest.raises(DecideInputError, match="non-empty"):
            locate_drift(pipe, "sdpa", PLANTED, prompt="  ", steps=STEPS)
    assert counter.forwards == 0


# -- autotune ------------------------------------------------------------------------------------------------------


def _nan_kernel(q, k, v, *, scale, causal=False, return_lse=False, **options):
    return fluxlab.attention(q, k, v, backend="sdpa", scale=scale, causal=causal) * math.nan


def _raising_kernel(q, k, v, **options):
    raise RuntimeError("kernel exploded")


def test_autotune_never_chooses_a_fast_wrong_kernel_and_says_why(pipe, tmp_path):
    from fluxlab.decide import AutotuneResult, autotune
    from fluxlab.models.attach import state_of

    state = state_of(pipe)
    fluxlab.register_backend("decide_nan", _nan_kernel, replace=True)
    fluxlab.register_backend("decide_raises", _raising_kernel, replace=True)
    allowed = state.allowed
    state.allowed = allowed | {"decide_nan", "decide_raises"}
    try:
        plan = autotune(pipe, candidates=[PLANTED, SLOW_CORRECT, "decide_nan", "decide_raises"], prompt=PROMPT,
                        steps=3, repeats=2, **FAST)
    finally:
        state.allowed = allowed
        fluxlab.registry.unregister_backend("decide_nan")
        fluxlab.registry.unregister_backend("decide_raises")
    assert set(plan.choices) == set(state.layer_names)
    assert set(plan.choices.values()) == {SLOW_CORRECT}, plan.to_markdown()
    # the planted kernel (sdpa's speed) fails on every layer; the sleeping one passes (no timing is asserted)
    assert all(m.verdict == "fail" for m in plan.measurements if m.backend == PLANTED)
    assert all(m.verdict == "pass" for m in plan.measurements if m.backend == SLOW_CORRECT)
    assert "yardstick" in plan.reasons[PLANTED]
    assert "NaN" in plan.reasons["decide_nan"] and "kernel exploded" in plan.reasons["decide_raises"]
    assert plan.schedule(state.layer_names[0], 0, 3) == SLOW_CORRECT
    # saved and loaded; a plan from another machine is refused unless allowed
    path = plan.save(tmp_path / "plan.json")
    assert AutotuneResult.load(path).choices == plan.choices
    import json

    data = json.loads(path.read_text())
    data["platform"]["device_name"] = "NVIDIA H200"
    data["versions"]["torch"] = "2.11.0+cu130"
    path.write_text(json.dumps(data))
    with pytest.raises(fluxlab.decide.PlanMismatchError, match="H200.*run fluxlab.autotune again"):
        AutotuneResult.load(path)
    assert AutotuneResult.load(path, allow_mismatch=True).notes


def test_autotune_refuses_unknown_candidates_before_generating(pipe):
    from fluxlab.decide import autotune

    with ForwardCounter(pipe) as counter:
        with pytest.raises(fluxlab.errors.UnknownBackendError):
            autotune(pipe, candidates=["sdpa", "flesh"], prompt=PROMPT, steps=3)
        with pytest.raises(DecideInputError, match="nothing to choose"):
            autotune(pipe, candidates=[], prompt=PROMPT, steps=3)
    assert counter.forwards == 0


# -- frontier ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_frontier_measures_every_schedule_marks_pareto_and_keeps_failing_candidates_as_rows(pipe):
    from fluxlab.decide import frontier
    from fluxlab.models.attach import state_of

    state = state_of(pipe)
    fluxlab.register_backend("decide_raises", _raising_kernel, replace=True)
    allowed = state.allowed
    state.allowed = allowed | {"decide_raises"}
    try:
        result = frontier(pipe, [PLANTED, "decide_raises"], prompt=PROMPT, steps=STEPS, repeats=1, **FAST)
    finally:
        state.allowed = allowed
        fluxlab.registry.unregister_backend("decide_raises")
    names = [r.name for r in result.rows]
    assert names[0] == "sdpa (exact)" and f"{PLANTED} everywhere" in names
    assert f"{PLANTED}, sdpa at 1 first+last" in names
    assert any(n.startswith(f"{PLANTED} except") for n in names), names
    exact = result.rows[0]
    assert exact.final_latent_rel_l2 == 0 and exact.verdict == "pass" and exact.pareto
    everywhere = next(r for r in result.rows if r.name == f"{PLANTED} everywhere")
    ends = next(r for r in result.rows if r.name == f"{PLANTED}, sdpa at 1 first+last")
    # the planted kernel drifts with or without exact ends (drift need not shrink with them: the dynamics are
    # not linear); timings are measured, never compared with a budget
    assert ends.final_latent_rel_l2 > 0 and everywhere.verdict == "fail"
    assert all(math.isfinite(r.step_ms) and r.step_ms > 0 for r in result.rows if r.error is None)
    failing = [r for r in result.rows if r.candidate == "decide_raises"]
    assert failing and all("kernel exploded" in r.error and r.verdict == "fail" and not r.pareto for r in failing)
    assert "Pareto" in result.to_markdown() and result.pareto
    assert PLANTED in result.drift_maps


# -- command line --------------------------------------------------------------------------------------------------


def _parse(argv):
    import argparse

    from fluxlab.decide import cli

    parser = argparse.ArgumentParser(prog="fluxlab")
    cli.add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv,message", [
    (["locate-drift", "--bad", "sdpx"], "sdpx"),
    (["locate-drift", "--bad", "sdpa_math", "--steps", "1"], "at least 2 denoising steps"),
    (["frontier", "--candidates", "sdpa_math", "--prompt", ""], "non-empty"),
    (["autotune", "--candidates", "flesh"], "flesh"),
    (["autotune", "--size", "65"], "not a multiple of 8"),
    (["autotune", "--confirm-rounds", "-1"], "confirm-rounds -1"),
    (["autotune", "--out", "{file}"], "is a file"),
])
def test_cli_mistakes_are_refused_before_the_model_loads(argv, message, monkeypatch, tmp_path):
    from fluxlab.decide import cli

    monkeypatch.setattr(cli, "_load", lambda *a: pytest.fail("the model was loaded despite a usage mistake"))
    (tmp_path / "a_file").write_text("not a folder")
    argv = [a.replace("{file}", str(tmp_path / "a_file")) for a in argv]
    args = _parse(argv if "--out" in argv else [*argv, "--out", str(tmp_path / "out")])
    with pytest.raises((fluxlab.FluxlabError, ValueError), match=message):
        args.func(args)
    assert not (tmp_path / "out").exists()


def test_cli_autotune_writes_markdown_png_and_json(pipe, monkeypatch, tmp_path):
    from fluxlab.decide import AutotuneResult, cli

    monkeypatch.setattr(cli, "_load", lambda *a: pipe)  # the module's pipeline: loading again costs seconds
    args = _parse(["autotune", "--candidates", f"sdpa,{PLANTED}", "--steps", "2", "--repeats", "1",
                   "--max-sequence-length", "32", "--no-progress", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fluxlab-run.json", "plan.json", "plan.md", "plan.png"]
    plan = AutotuneResult.load(tmp_path / "plan.json")
    assert set(plan.choices.values()) == {"sdpa"} and PLANTED in plan.reasons
    assert "plan.png" in (tmp_path / "plan.md").read_text()
    _assert_provenance(tmp_path / "plan.json")


def _assert_provenance(path):
    """A result file says where it came from: platform, versions, model, command (fluxlab.results)."""
    import json

    provenance = json.loads(path.read_text())["provenance"]
    assert provenance["platform"]["vendor"] and provenance["versions"]["torch"] and provenance["command"]
    assert provenance["model"]["pipeline"] == "Flux2KleinPipeline" and provenance["model"]["dtype"] == "float32"


def test_cli_locate_drift_writes_drift_json_with_its_provenance(pipe, monkeypatch, tmp_path):
    from fluxlab.decide import cli

    monkeypatch.setattr(cli, "_load", lambda *a: pipe)
    args = _parse(["locate-drift", "--good", "sdpa", "--bad", PLANTED, "--steps", "2", "--budget", "2",
                   "--max-sequence-length", "32", "--no-progress", "--out", str(tmp_path)])
    assert args.func(args) == 0
    _assert_provenance(tmp_path / "drift.json")


def test_seeds_are_read_as_compare_images_reads_them_and_never_rounded():
    """decide's seeds= takes what compare_images takes (one seed, several, numpy integers) and refuses what it
    refuses; a fractional seed is refused, not rounded to another seed's image."""
    import numpy as np

    from fluxlab.decide.runs import seed_list

    assert seed_list(3) == [3] and seed_list((0, np.int64(2))) == [0, 2]
    for bad, message in ((1.5, "whole number"), ([0, -1], "whole number"), ((), "seeds= is empty")):
        with pytest.raises(DecideInputError, match=message):
            seed_list(bad)
