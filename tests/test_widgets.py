"""The notebook widgets, driven as a user would from Python: set values, click, read what is displayed."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets", reason="the widgets need the notebooks extra: pip install -e '.[notebooks]'")

import fluxlab  # noqa: E402
from fluxlab.doctor import BackendStatus  # noqa: E402
from fluxlab.widgets import BackendPicker, BackendToggleDemo, ComparisonPanel, ImageGallery  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def close_widgets():
    """ipywidgets keeps every open widget (and the pipeline it holds, still attached) alive in a registry:
    close them after this module so the models, and fluxlab's router, are released for the tests after it."""
    yield
    import gc

    import ipywidgets

    ipywidgets.Widget.close_all()
    gc.collect()


def status(name, available=True, default=False, reasons=()):
    return BackendStatus(name, available, tuple(reasons), "1.0", default, f"{name} kernel", False, False, False, True)


def is_png(value) -> bool:
    return bytes(value[:8]) == b"\x89PNG\r\n\x1a\n"


STATUSES = [status("sdpa", default=True), status("flex"),
            status("fa4", available=False, reasons=("fa4 runs on nvidia, not on cpu",)),
            status("reference")]


class AttentionPipe:
    """A stand-in pipeline whose pixels come from a real ``fluxlab.attention`` call on the current backend."""

    def __init__(self):
        self.calls = []

    def __call__(self, *, prompt, height, width, num_inference_steps, generator, **kwargs):
        gen = torch.Generator().manual_seed(generator.initial_seed())
        q, k, v = (torch.randn(1, height * width // 16, 2, 16, generator=gen) for _ in range(3))
        out = fluxlab.attention(q, k, v)
        self.calls.append(fluxlab.dispatch.selected_backend())
        pixels = torch.sigmoid(out[0, :, 0, :3]).reshape(height // 4, width // 4, 3).numpy()
        pixels = np.kron(pixels, np.ones((4, 4, 1)))
        return types.SimpleNamespace(images=[(pixels * 255).astype(np.uint8)])


@pytest.fixture
def broken_backend():
    def broken(q, k, v, *, scale, causal=False, return_lse=False, **_):
        raise RuntimeError("kernel exploded on purpose")

    fluxlab.register_backend("widget_broken", broken, description="raises on every call")
    yield "widget_broken"
    fluxlab.registry.unregister_backend("widget_broken")


# ----------------------------------------------------------------------------------------------- picker


def test_picker_lists_every_backend_with_reasons_and_default():
    picker = BackendPicker(STATUSES)
    assert list(picker.buttons) == ["sdpa", "flex", "fa4", "reference"]
    assert picker.value == "sdpa"
    assert picker.buttons["sdpa"].value and picker.buttons["sdpa"].description.endswith("\u2605")
    assert "default" in picker.buttons["sdpa"].tooltip
    assert picker.buttons["fa4"].disabled
    assert "fa4 runs on nvidia, not on cpu" in picker.buttons["fa4"].tooltip
    assert "fa4 runs on nvidia" in picker._why.value
    assert not picker.buttons["flex"].disabled and "flex kernel" in picker.buttons["flex"].tooltip


def test_picker_built_from_this_machines_registry():
    rows = fluxlab.backends()
    picker = BackendPicker()
    assert set(picker.buttons) == {r.name for r in rows}
    for row in rows:
        assert picker.buttons[row.name].disabled == (not row.available)
        for reason in row.reasons:
            assert reason in picker.buttons[row.name].tooltip
    assert picker.value == fluxlab.dispatch.default_backend()


def test_picker_single_choice_click_and_callbacks():
    picker = BackendPicker(STATUSES)
    seen = []
    picker.on_change(seen.append)
    picker.click("flex")
    assert picker.value == "flex" and seen == ["flex"]
    assert picker.buttons["flex"].value and not picker.buttons["sdpa"].value
    assert picker.buttons["flex"].button_style == "info" and picker.buttons["sdpa"].button_style == ""
    picker.buttons["flex"].value = False  # pressing the pressed button: stays chosen
    assert picker.value == "flex" and picker.buttons["flex"].value
    picker.click("fa4")  # disabled: ignored
    assert picker.value == "flex" and seen == ["flex"]
    picker.value = "reference"
    assert picker.buttons["reference"].value and seen == ["flex", "reference"]


def test_picker_refuses_unavailable_and_unknown_values():
    picker = BackendPicker(STATUSES)
    with pytest.raises(Exception, match="fa4 runs on nvidia"):
        picker.value = "fa4"
    with pytest.raises(Exception, match="not in this picker"):
        picker.value = "nope"
    assert picker.value == "sdpa"


def test_picker_multiple():
    picker = BackendPicker(STATUSES, multiple=True)
    assert picker.value == ("sdpa",)
    picker.click("reference")
    picker.click("flex")
    assert picker.value == ("sdpa", "flex", "reference")  # registry order
    picker.click("sdpa")
    assert picker.value == ("flex", "reference") and not picker.buttons["sdpa"].value


def test_picker_refresh_sees_a_new_backend(broken_backend):
    picker = BackendPicker(exclude=("reference",))
    assert broken_backend in picker.buttons  # registered before the picker was built
    fluxlab.registry.unregister_backend(broken_backend)
    try:
        picker.refresh()
        assert broken_backend not in picker.buttons
    finally:
        fluxlab.register_backend(broken_backend, lambda q, k, v, **kw: q)


# ------------------------------------------------------------------------------------------ toggle demo


def test_toggle_demo_generates_and_switches_backend():
    pipe = AttentionPipe()
    demo = BackendToggleDemo(pipe, statuses=STATUSES)
    assert is_png(demo.image.value)
    assert "ran on sdpa" in demo.result.value and " ms " in demo.result.value
    demo.picker.click("reference")  # auto-run on click
    assert pipe.calls[-1].name == "reference"
    assert "ran on reference" in demo.result.value and "run 2" in demo.result.value
    assert is_png(demo.image.value)
    assert [h["backend"] for h in demo.history] == ["sdpa", "reference"]
    assert "reference" in demo.table.value


def test_toggle_demo_shows_a_failing_backend_inline_and_recovers(broken_backend):
    pipe = AttentionPipe()
    demo = BackendToggleDemo(pipe, backends=["sdpa", broken_backend])
    image = demo.image.value
    demo.picker.click(broken_backend)
    assert "failed" in demo.result.value
    assert "kernel exploded on purpose" in demo.error.value
    assert demo.image.value == image  # the last good image stays
    demo.picker.click("sdpa")
    assert demo.error.value == "" and "ran on sdpa" in demo.result.value
    assert [h["ok"] for h in demo.history] == [True, False, True]


@pytest.mark.parametrize("control, value, message", [
    ("prompt", "   ", "enter a prompt"),
    ("height", 60, "multiple of 16"),
    ("width", 8, "between 16 and"),
    ("steps", 0, "steps must be"),
    ("seed", -1, "seed must be"),
])
def test_toggle_demo_bad_settings_show_a_message_next_to_the_control(control, value, message):
    pipe = AttentionPipe()
    demo = BackendToggleDemo(pipe, statuses=STATUSES)
    calls = len(pipe.calls)
    getattr(demo, control).value = value
    assert demo.run() is None
    assert len(pipe.calls) == calls  # nothing generated
    label = {"height": demo.size_message, "width": demo.size_message}.get(control) or getattr(demo, f"{control}_message")
    assert message in label.value
    assert "fix the marked settings" in demo.result.value
    getattr(demo, control).value = {"prompt": "a cat", "height": 64, "width": 64, "steps": 2, "seed": 3}[control]
    demo.button.click()
    assert label.value == "" and "ran on sdpa" in demo.result.value


def test_toggle_demo_with_no_runnable_backend():
    only = [status("fa4", available=False, reasons=("not here",))]
    demo = BackendToggleDemo(AttentionPipe(), statuses=only)
    assert demo.run() is None and "none can run here" in demo.result.value


# ------------------------------------------------------------------------------------- comparison panel


def test_comparison_panel_synthetic_shape(broken_backend):
    panel = ComparisonPanel(backends=["sdpa", "sdpa_math", broken_backend], seq=64, heads=2, head_dim=32)
    report = panel.run()
    assert report is not None and panel.report is report
    assert report.verdicts["sdpa"] == "pass" and report.verdicts[broken_backend] == "fail"
    assert "PASS" in panel.verdicts.value and "FAIL" in panel.verdicts.value
    assert "FAIL for widget_broken" in panel.status.value
    assert "<table" in panel.table.value and "rel_l2" in panel.table.value
    assert is_png(panel.heatmap.value)


def test_comparison_panel_captured_layer():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=gen).to(torch.bfloat16) for _ in range(3))
    out = fluxlab.attention(q, k, v, backend="sdpa")
    record = fluxlab.record.AttentionRecord(q, k, v, scale=16**-0.5, out=out, layer="transformer_blocks.0.attn",
                                            step=0, backend="sdpa", text_tokens=8)
    panel = ComparisonPanel([record], backends=["sdpa", "flex"])
    assert panel.source.value == "captured layer"
    assert "transformer_blocks.0.attn/step0" in panel.layer.options[0][0]
    report = panel.run()
    assert set(report.verdicts) >= {"sdpa", "flex"}
    assert any(r.backend.startswith("recorded:") for r in report.rows)
    assert "transformer_blocks.0.attn" in panel.table.value


def test_comparison_panel_bad_settings():
    panel = ComparisonPanel(backends=["sdpa"], seq=0)
    assert panel.run() is None and "seq must be" in panel.shape_message.value
    panel.seq.value = 32
    panel.picker.value = ()
    assert panel.run() is None and "pick at least one backend" in panel.picker_message.value
    panel.picker.value = ("sdpa",)
    panel.source.value = "captured layer"  # no records given
    assert panel.run() is None and "no captured layer" in panel.layer_message.value
    panel.source.value = "synthetic shape"
    panel.head_dim.value = 16
    panel.heads.value = 2
    assert panel.run() is not None and panel.shape_message.value == ""
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_() and repr(panel)


def test_comparison_panel_reports_a_crashing_comparison():
    panel = ComparisonPanel(backends=["sdpa"], seq=32, heads=2, head_dim=16)
    panel.dtype.value = "float16"
    panel.picker.value = ("sdpa",)
    import fluxlab.compare as compare_module

    original = compare_module.compare_attention
    compare_module.compare_attention = lambda **kw: (_ for _ in ()).throw(MemoryError("out of memory"))
    try:
        assert panel.run() is None
    finally:
        compare_module.compare_attention = original
    assert "MemoryError: out of memory" in panel.status.value
    assert panel.run() is not None


# ---------------------------------------------------------------------------------------------- gallery


def fake_compare_images(pipe, backends, prompt, seed, steps, height, width, reference=None):
    """The result type of fluxlab.compare.compare_images, computed from AttentionPipe images."""
    from fluxlab.compare.images import ImageComparison, ImageRow

    reference = reference or backends[0]
    rows, images = [], {}
    for name in backends:
        row = ImageRow(name)
        try:
            with fluxlab.use_backend(name):
                out = pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps,
                           generator=torch.Generator().manual_seed(seed))
            images[name] = out.images[0] / 255.0
            row.time_s, row.latent_drift = 0.01, [1e-7 * (i + 1) for i in range(steps)]
        except Exception as exc:  # noqa: BLE001
            row.error = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    for row in rows:
        if row.backend in images:
            diff = np.abs(images[row.backend] - images[reference])
            row.max_abs_pixel = float(diff.max())
            row.psnr = float("inf") if row.max_abs_pixel == 0 else 10 * np.log10(1 / float((diff**2).mean()))
            row.ssim = 1.0
    return ImageComparison(reference, rows, images, {}, {"prompt": prompt})


def test_gallery_side_by_side_with_diffs(broken_backend):
    pytest.importorskip("fluxlab.compare.images")
    gallery = ImageGallery(AttentionPipe(), backends=["sdpa", "reference", broken_backend],
                           compare=fake_compare_images)
    assert gallery.reference.options == ("reference", "sdpa", broken_backend)  # the picker's order: by name
    comparison = gallery.run()
    assert comparison is not None
    cards = gallery.cards.children
    assert len(cards) == 3
    assert all(isinstance(w, type(gallery.drift)) for w in cards[0].children[1:3])  # image + difference map
    assert "reference" in cards[0].children[0].value and "PSNR" in cards[1].children[0].value
    assert "kernel exploded on purpose" in cards[2].children[0].value
    assert "failed: widget_broken" in gallery.status.value
    assert "PSNR dB" in gallery.table.value
    assert is_png(gallery.drift.value)
    assert "application/vnd.jupyter.widget-view+json" in gallery._repr_mimebundle_()
    gallery.reference.value = "reference"  # the reference's card comes first, whatever the picker order
    comparison = gallery.run()
    assert comparison.reference == "reference" and [r.backend for r in comparison.rows][0] == "reference"
    assert "(reference)" in gallery.table.value.split("</tr>")[1]


def test_gallery_shows_a_given_comparison_without_generating():
    pytest.importorskip("fluxlab.compare.images")
    made = fake_compare_images(AttentionPipe(), ["sdpa", "reference"], "a red circle", 0, 2, 64, 64)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return fake_compare_images(*args[:2], **{k: v for k, v in kwargs.items() if k in
                                                   ("prompt", "seed", "steps", "height", "width", "reference")})

    gallery = ImageGallery(AttentionPipe(), backends=["sdpa", "reference"], comparison=made, compare=counting)
    assert calls == [] and gallery.comparison is made  # shown, not generated again
    assert len(gallery.cards.children) == 2 and "2 image(s) vs sdpa" in gallery.status.value
    assert is_png(gallery.drift.value)
    gallery.picker.value = ("sdpa",)  # the button still generates anew, with what is picked now
    assert gallery.run() is not None and calls == [["sdpa"]] and len(gallery.cards.children) == 1
    with pytest.raises(ValueError, match="not both"):
        ImageGallery(AttentionPipe(), comparison=made, run_on_start=True)


def test_gallery_bad_settings_and_errors():
    def exploding(*args, **kwargs):
        raise RuntimeError("the pipeline never called fluxlab")

    gallery = ImageGallery(AttentionPipe(), statuses=STATUSES, compare=exploding)
    gallery.height.value = 50
    assert gallery.run() is None and "multiple of 16" in gallery.settings_message.value
    gallery.height.value = 64
    assert gallery.run() is None and "the pipeline never called fluxlab" in gallery.status.value
    gallery.picker.value = ()
    assert gallery.run() is None and "pick at least one" in gallery.picker_message.value


# ------------------------------------------------------------------------------- a real tiny FLUX.2 pipeline


@pytest.fixture(scope="module")
def tiny_pipe():
    if hasattr(fluxlab, "load_flux2"):
        return fluxlab.load_flux2("tiny", flux2_variant="dev")
    from fluxlab.models.attach import attach
    from fluxlab.models.tiny import build_tiny_pipeline

    return attach(build_tiny_pipeline("dev"))


def test_toggle_demo_on_the_tiny_flux2_pipeline(tiny_pipe, broken_backend):
    demo = BackendToggleDemo(tiny_pipe, height=32, width=32, steps=2)
    assert demo.picker.value == fluxlab.dispatch.default_backend()
    assert is_png(demo.image.value)
    calls = demo.history[-1]["ran"]
    assert calls and set(calls) == {demo.picker.value}  # the capture saw who served the attention calls
    assert "attention calls" in demo.result.value
    for widget in (demo, demo.picker):  # what the notebook displays
        assert "application/vnd.jupyter.widget-view+json" in widget._repr_mimebundle_() and repr(widget)
    demo.picker.click("reference")
    assert demo.history[-1]["ran"] == {"reference": sum(calls.values())}
    assert "ran on reference" in demo.result.value
    # a registered backend is in a FLUX.2 model's default allowed set (it follows the registry): offered at once
    assert not demo.picker.buttons[broken_backend].disabled


# ------------------------------------------------------------ progress, cancel, warm-up and peak memory (issue 12)


def test_toggle_demo_progress_bar_follows_the_steps(tiny_pipe):
    demo = BackendToggleDemo(tiny_pipe, height=32, width=32, steps=3, backends=["sdpa"], threaded=False)
    values = []
    demo.runner.progress.observe(lambda change: values.append(change["new"]), names="value")
    demo.run()
    assert values == [0, 1, 2, 3] and demo.runner.progress.max == 3
    assert demo.runner.progress.description == "3/3 steps" and demo.runner.progress.bar_style == "success"
    assert demo.runner.cancel_button.disabled and not demo.button.disabled
    assert "peak GPU memory n/a on CPU" in demo.result.value  # no allocator counter on the CPU: not claimed


def _cancel_after_step_1(runner):
    """Click the runner's Cancel once its progress reaches step 1; returns the observer (to unobserve it)."""

    def click_cancel_after_step_1(change):
        if change["new"] == 1 and not runner.cancel_button.disabled:
            runner.cancel_button.click()

    runner.progress.observe(click_cancel_after_step_1, names="value")
    return click_cancel_after_step_1


def test_toggle_demo_cancel_stops_between_steps_and_stays_usable(tiny_pipe):
    demo = BackendToggleDemo(tiny_pipe, height=32, width=32, steps=3, backends=["sdpa", "reference"],
                             threaded=False)
    image = demo.image.value
    click_cancel_after_step_1 = _cancel_after_step_1(demo.runner)
    assert demo.run() is None
    assert "cancelled after 1 of 3 steps" in demo.result.value and "the last image stays" in demo.result.value
    assert demo.image.value == image and demo.history[-1]["cancelled"] and demo.error.value == ""
    assert demo.runner.progress.bar_style == "warning" and demo.runner.cancel_button.disabled
    demo.runner.progress.unobserve(click_cancel_after_step_1, names="value")
    demo.picker.click("reference")  # usable again: the next click generates
    assert "ran on reference" in demo.result.value and demo.runner.progress.description == "3/3 steps"


def test_toggle_demo_warms_up_once_before_timing_and_says_so(tiny_pipe):
    demo = BackendToggleDemo(tiny_pipe, height=32, width=48, steps=2, backends=["sdpa"], warmup=True,
                             threaded=False)
    assert "sdpa: warmed up once (1 step at 48x32" in demo.result.value and "before timing" in demo.result.value
    demo.run()
    assert "sdpa: already warm in this process" in demo.result.value
    default = BackendToggleDemo(tiny_pipe, height=32, width=32, steps=1, backends=["sdpa"], threaded=False)
    assert "warm" not in default.result.value  # "auto" on the CPU: nothing here compiles on first use


def test_gallery_progress_cancel_and_timing_labels_on_the_tiny_pipeline(tiny_pipe):
    gallery = ImageGallery(tiny_pipe, backends=["sdpa", "reference"], reference="reference", steps=2, height=32,
                           width=64, warmup=["sdpa"], threaded=False)
    assert gallery.run() is not None
    assert gallery.runner.progress.description == "4/4 steps" and gallery.runner.progress.bar_style == "success"
    assert "sdpa: warmed up once (1 step at 64x32" in gallery.status.value
    assert "peak GPU memory: n/a on CPU" in gallery.status.value
    cards = gallery.cards.children
    click_cancel_after_step_1 = _cancel_after_step_1(gallery.runner)
    assert gallery.run() is None
    assert "cancelled after 1 of 4 steps" in gallery.status.value and gallery.last_error is None
    assert gallery.cards.children == cards and not gallery.button.disabled
    gallery.runner.progress.unobserve(click_cancel_after_step_1, names="value")
    assert gallery.run() is not None and "sdpa: already warm" in gallery.status.value


def test_run_controls_run_clicks_in_a_thread_inside_a_kernel():
    import threading

    from fluxlab.widgets._common import RunControls, in_kernel

    assert not in_kernel()  # pytest is no Jupyter kernel: clicks run inline (what the tests above rely on)
    done, names = threading.Event(), []
    RunControls(threaded=True).launch(lambda: (names.append(threading.current_thread().name), done.set()))
    assert done.wait(120) and names == ["fluxlab-generate"]
    RunControls().launch(lambda: names.append(threading.current_thread().name))
    assert names[-1] == threading.main_thread().name


# ------------------------------------------------------------------- drift explorer (issue 14) on the embedded model

EXPLORE = dict(prompt="a red circle at the top left on a blue background", steps=3, max_sequence_length=32)
SCALE_BUG = "widget_scale_bug"


def _scale_bug(q, k, v, *, scale, causal=False, return_lse=False, **options):
    return fluxlab.attention(q, k, v, backend="sdpa", scale=scale * 1.1, causal=causal, return_lse=return_lse)


def _exploding(q, k, v, **options):
    raise RuntimeError("kernel exploded on purpose")


@pytest.fixture(scope="module")
def explored():
    """The embedded model and the drift map of a planted scale bug (beam=1: some cells are never split)."""
    fluxlab.register_backend(SCALE_BUG, _scale_bug, replace=True, description="planted: softmax scale x1.1")
    pipe = fluxlab.load_flux2("embedded", allowed=fluxlab.models.FLUX2_BACKENDS | {SCALE_BUG})
    drift = fluxlab.locate_drift(pipe, "sdpa", SCALE_BUG, beam=1, **EXPLORE)
    yield pipe, drift
    fluxlab.detach(pipe)
    fluxlab.registry.unregister_backend(SCALE_BUG)


def _one_cell_generation(pipe, layer, step):
    """A direct generation with a one-cell Schedule (bad at that layer and step only): final latents and image."""
    from fluxlab import Schedule
    from fluxlab.models import Rule

    latents = []

    def keep(pipeline, i, timestep, tensors):
        latents.append(tensors["latents"].detach().float().clone())
        return tensors

    fluxlab.set_schedule(pipe, Schedule(default="sdpa", rules=[Rule(SCALE_BUG, layers=(layer,), steps=(step,))]))
    try:
        out = pipe(prompt=EXPLORE["prompt"], num_inference_steps=EXPLORE["steps"],
                   max_sequence_length=EXPLORE["max_sequence_length"], generator=torch.Generator().manual_seed(0),
                   output_type="np", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        fluxlab.set_schedule(pipe, None)
    return latents[-1], np.asarray(out.images[0], dtype=np.float64)


def test_drift_explorer_click_shows_that_cell_switched_alone_and_caches_it(explored):
    from fluxlab.widgets import DriftExplorer
    from fluxlab.widgets.drift_explorer import UNSCORED_COLOUR

    pipe, drift = explored
    forwards = []
    handle = pipe.transformer.register_forward_pre_hook(lambda *args: forwards.append(1))  # counted apart
    try:
        explorer = DriftExplorer(pipe, drift, threaded=False)
        assert not forwards and explorer.generations == 0, "nothing may be generated before a click"
        assert "nothing is generated until" in explorer.status.value
        assert len(explorer.buttons) == len(drift.layers) * drift.steps
        top = drift.cells(1)[0]
        layer, step = top.layer, top.steps[0]
        button = explorer.buttons[(layer, step)]
        assert button.description == f"{top.contribution:.1e}" and "rel-L2" in button.tooltip
        unscored = next(key for key, b in explorer.buttons.items() if b.description == "\u00b7")
        assert np.isnan(drift.grid[drift.layers.index(unscored[0]), unscored[1]])

        button.click()  # the first click: all good, all bad, then the cell
        assert explorer.last_error is None, explorer.last_error
        first = len(forwards)
        assert explorer.generations == 3 and first > 0
        view = explorer.views[(layer, step)]
        latents, image = _one_cell_generation(pipe, layer, step)
        assert torch.equal(view.run.final, latents), "the explorer's cell is not the one-cell schedule's generation"
        assert np.array_equal(view.run.image, image)
        # the same runs as locate_drift: the measured rel-L2 is the map's number for that cell
        assert view.fidelity["final_latent_rel_l2"] == pytest.approx(top.contribution, rel=1e-9)
        assert 0 < view.fidelity["psnr"] < float("inf")
        for key in ("good", "cell", "bad"):
            assert is_png(explorer.cards[key][2].value)
        assert f"only {layer.removesuffix('.attn')} at step {step} bad" in explorer.cards["cell"][1].value
        assert "PSNR" in explorer.cards["bad"][1].value and "locate_drift scored it" in explorer.status.value
        assert button.style.font_weight == "bold" and "measured here" in button.tooltip
        assert explorer.runner.progress.description == f"{3 * drift.steps}/{3 * drift.steps} steps"
        forwards.clear()  # (the direct generation above was counted too)
        button.click()  # the same cell again: from the cache
        assert not forwards and explorer.generations == 3 and "from the cache" in explorer.status.value

        # a cell the search never split, picked with the menus: one generation, the end images are reused
        explorer.layer.value, explorer.step.value = unscored
        explorer.button.click()
        assert explorer.generations == 4 and len(forwards) == first // 3
        assert explorer.buttons[unscored].description != "\u00b7"  # measured here now, and coloured by it
        assert explorer.buttons[unscored].style.button_color != UNSCORED_COLOUR
        assert "scored it" not in explorer.status.value
        assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()
    finally:
        handle.remove()


def test_drift_explorer_shows_failures_and_cancel_in_the_widget(explored):
    from fluxlab.widgets import DriftExplorer

    pipe, drift = explored
    explorer = DriftExplorer(pipe, drift, threaded=False, max_buttons=4)  # too many cells: heatmap and menus
    assert not explorer.buttons and is_png(explorer.children[1].value)
    cell = (drift.layers[0], 0)
    fluxlab.register_backend(SCALE_BUG, _exploding, replace=True)  # the bad kernel breaks after the map was made
    try:
        assert explorer.show(*cell) is None  # shown, not raised
    finally:
        fluxlab.register_backend(SCALE_BUG, _scale_bug, replace=True)
    assert "failed" in explorer.status.value and "kernel exploded on purpose" in explorer.error.value
    assert "kernel exploded on purpose" in explorer.last_error and cell not in explorer.views
    assert explorer.runner.progress.bar_style == "danger" and not explorer.runner.busy

    click_cancel_after_step_1 = _cancel_after_step_1(explorer.runner)
    assert explorer.show(*cell) is None
    assert "cancelled after 1 of" in explorer.status.value and cell not in explorer.views
    assert explorer.runner.progress.bar_style == "warning" and explorer.error.value == ""
    explorer.runner.progress.unobserve(click_cancel_after_step_1, names="value")
    assert explorer.show(*cell) is not None and "vs all good" in explorer.status.value  # usable again


def test_drift_explorer_refuses_a_map_it_cannot_replay(explored):
    import dataclasses

    from fluxlab.decide import DecideInputError
    from fluxlab.widgets import DriftExplorer

    pipe, drift = explored
    with pytest.raises(DecideInputError, match="does not carry its good and bad"):
        DriftExplorer(pipe, dataclasses.replace(drift, plans=()))
    with pytest.raises(DecideInputError, match="replay it on the pipeline it was located on"):
        DriftExplorer(pipe, dataclasses.replace(drift, layers=drift.layers[:-1]))
    with pytest.raises(DecideInputError, match="steps 0..2"):
        drift.replay(pipe).cell(drift.layers[0], 3)
