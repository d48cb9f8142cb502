"""Honest timings in the lab: JIT backends warmed up before timing, step progress, cancel between steps, peak memory."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("skimage", reason="compare_images needs scikit-image (the compare extra)")

import fluxlab  # noqa: E402
from fluxlab.compare import compare_images  # noqa: E402
from fluxlab.models.progress import GenerationCancelled, StepControl, jit_reason, to_warm  # noqa: E402

SMALL = dict(prompt="a red circle", height=32, width=32, steps=2, yardstick=False, max_sequence_length=16)


@pytest.fixture(scope="module")
def pipe():
    pipe = fluxlab.load_flux2("tiny", flux2_variant="dev")
    yield pipe
    fluxlab.detach(pipe)


def test_what_compiles_on_first_use():
    assert jit_reason("fa4", torch.device("cuda")) and jit_reason("flex", "cuda")
    assert jit_reason("sdpa", "cuda") is None
    assert all(jit_reason(name, "cpu") is None for name in ("fa4", "flex", "sdpa"))  # flex runs eagerly on the CPU
    assert to_warm(["sdpa", "flex", "fa4"], "cuda") == ["flex", "fa4"]
    assert to_warm(["sdpa", "flex"], "cpu") == [] and to_warm(["sdpa", "flex"], "cpu", True) == ["sdpa", "flex"]


def test_warm_up_runs_once_before_timing_and_is_labelled(pipe):
    first = compare_images(pipe, ["sdpa", "reference"], warmup=["reference"], **SMALL)
    rows = first.metrics
    assert rows["reference"].warmup_s is not None and rows["reference"].warmup_s > 0
    assert rows["sdpa"].warmup_s is None
    assert "reference: warmed up once (1 step at 32x32" in first.settings["warm_up"]
    assert "before timing" in first.to_markdown()
    # the timed run's count of attention calls excludes the warm-up step's
    assert rows["reference"].attention_calls == rows["sdpa"].attention_calls > 0
    again = compare_images(pipe, ["sdpa", "reference"], warmup=["reference"], **SMALL)
    assert "reference: already warm in this process" in again.settings["warm_up"]
    assert again.metrics["reference"].warmup_s is None


def test_nothing_is_warmed_on_the_cpu_by_default_and_peak_memory_says_n_a(pipe):
    result = compare_images(pipe, ["sdpa", "flex"], **SMALL)
    assert result.settings["warm_up"].startswith("no warm-up needed")
    assert result.settings["peak_memory"] == "n/a on CPU"
    assert all(row.peak_memory_bytes is None for row in result.rows)


def test_progress_counts_every_timed_step(pipe):
    control, seen = StepControl(), []
    control.listen(lambda done, total: seen.append((done, total)))
    compare_images(pipe, ["sdpa", "reference"], control=control, **SMALL)
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert [done for done, _ in seen] == list(range(5))


def test_cancel_stops_between_steps_and_the_pipeline_stays_usable(pipe):
    control, cancels = StepControl(), [1]  # one cancel, as a click would

    def click_cancel_after_step_1(done, total):
        if done == 1 and cancels:
            cancels.pop()
            control.cancel()

    control.listen(click_cancel_after_step_1)
    with pytest.raises(GenerationCancelled, match="cancelled after 1 of 4 steps"):
        compare_images(pipe, ["sdpa", "reference"], control=control, **SMALL)
    assert control.done == 1  # diffusers skipped the remaining step of that run; no other backend started
    result = compare_images(pipe, ["sdpa", "reference"], control=control, **SMALL)  # start() clears the cancel
    assert control.done == 4 and result.metrics["reference"].error is None


def test_generate_reports_peak_memory_and_the_offload_choice(tmp_path):
    import json

    from fluxlab.models.generate import generate

    pipe = fluxlab.load_flux2("tiny", offload="auto", device="cpu", height=32, width=32)
    try:
        (result,) = generate(pipe, "sdpa", prompt="a red circle", steps=1, width=32, height=32, out_dir=tmp_path,
                             progress=False, max_sequence_length=16)
    finally:
        fluxlab.detach(pipe)
    assert result.peak_memory_bytes is None  # no allocator counter on the CPU: not claimed
    manifest = json.loads((tmp_path / "sdpa" / "manifest.json").read_text())
    assert manifest["memory"] == {"peak_allocated_bytes": None, "device": "cpu",
                                  "measured_by": "n/a on CPU (no allocator counter)"}
    offload = manifest["model"]["offload"]
    assert offload["requested"] == "auto" and offload["mode"] is None and "no accelerator" in offload["reason"]
    assert offload["estimate"]["weight_bytes"] > 0
