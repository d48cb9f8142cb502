"""Every notebook runs top to bottom headless (nbclient, this venv's kernel) with its expected outputs present, where
tests/test_browser.py cannot run it in JupyterLab (see HEADLESS)."""

from __future__ import annotations

import copy
import shutil

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient")
pytest.importorskip("ipykernel", reason="the test extra installs ipykernel")

from _jupyter import (EXPECTED, NOTEBOOK_DIR, NOTEBOOKS, ROOT, browser_available, isolated_env,  # noqa: E402
                      missing_outputs, outputs)

# Where tests/test_browser.py can run (a Chromium and playwright; CI), it runs every notebook top to bottom in
# JupyterLab and checks these same EXPECTED outputs, no error output and 04's pixel test on the notebook saved from
# the browser: running them here too would prove the same path twice. Headless then runs the first notebook only
# (nbclient: the path of `jupyter nbconvert --execute`); without a browser, every notebook, the scene check included.
# Where a browser runs the notebooks, 03's AMD pictures are checked by test_amd_section_draws_the_scene instead (the
# same call the notebook makes), which costs a third of running 03 a second time.
HEADLESS = NOTEBOOKS[:1] if browser_available() else NOTEBOOKS

# A generous wait for one cell on a loaded 2-core machine; not a speed budget (speed is measured in benchmarks/,
# and `make test` lists the slowest tests).
CELL_TIMEOUT_S = 600

# Cells the test appends to a notebook after its own: they report what the notebook drew, for the pixel test.
# 04: the drift explorer's three images (all good, the strongest cell bad, all bad), regenerated from the notebook's
# own drift map (locate_drift's prompt, seed, steps and size) without touching the explorer widget.
SCENE_CHECKS = {
    # 03: the AMD section's pictures (each aiter MHA v4 format, each how_v3_bf16_cvt mode) and their verdicts.
    "03_flux2_side_by_side.ipynb": (
        "import json as _json, sys as _sys\n"
        f"_sys.path.insert(0, {str(ROOT)!r})\n"
        "from training.shapes_data import scene_problems as _scene_problems\n"
        "print('SCENE ' + _json.dumps({'caption': settings.prompt, 'verdicts': amd.verdicts, 'problems': {\n"
        "    name: _scene_problems(image, settings.prompt) for name, image in amd.images.items()}}))"),
    "04_decide.ipynb": (
        "import json as _json, sys as _sys\n"
        f"_sys.path.insert(0, {str(ROOT)!r})  # the pixel rule lives in training/ (the repository, not the package)\n"
        "from training.shapes_data import scene_problems as _scene_problems\n"
        "_replay, _top = drift.replay(pipe), drift.cells(1)[0]\n"
        "_runs = {'all good': None, 'one cell bad': _replay.cell(_top.layer, _top.steps[0]), 'all bad': _replay.all_cells}\n"
        "print('SCENE ' + _json.dumps({'caption': RUN['prompt'], 'problems': {\n"
        "    name: _scene_problems(_replay.run(cells).image, RUN['prompt']) for name, cells in _runs.items()}}))"),
}


def check_amd_section(report) -> None:
    """Notebook 03's AMD section: every format and rounding mode produced a picture and a verdict, and each picture
    whose verdict passes draws the embedded model's scene (the named colours in the named cells)."""
    from fluxlab.backends.emu_aiter_quant import FORMATS

    PADDED = "emu_aiter_quant_pad128"  # registry.register_padded("emu_aiter_quant", 128), as the notebook names it

    names = {f"emu_aiter:how_v3_bf16_cvt={mode}" for mode in (0, 1, 2)} | {f"{PADDED}:format={f}" for f in FORMATS}
    verdicts, problems = report["verdicts"], report["problems"]
    assert names <= set(verdicts) and names <= set(problems), f"missing pictures or verdicts: {verdicts}"
    assert set(verdicts.values()) <= {"pass", "warn", "fail"}, verdicts
    passing = [name for name, verdict in verdicts.items() if verdict == "pass"]
    assert "reference" in passing and len(passing) > 1, f"only the reference passes: {verdicts}"
    drawn_wrong = {name: problems[name] for name in passing if problems[name]}
    assert not drawn_wrong, f"pictures that pass their verdict but do not draw {report['caption']!r}: {drawn_wrong}"


def scene_report(nb) -> dict:
    import json

    lines = [line for text in outputs(nb, "stream") for line in text.splitlines() if line.startswith("SCENE ")]
    assert len(lines) == 1, f"the scene check printed {lines!r}"
    return json.loads(lines[0].removeprefix("SCENE "))


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch):
    env = isolated_env(tmp_path / "jupyter")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, work)
    return work


def test_every_notebook_is_listed():
    assert NOTEBOOKS == sorted(EXPECTED), "a notebook without expected outputs, or an expected one missing"


@pytest.mark.parametrize("name", HEADLESS)
def test_notebook_runs_headless(name, jupyter_env):
    nb = nbformat.read(jupyter_env / name, as_version=4)
    if name in SCENE_CHECKS:
        nb.cells.append(nbformat.v4.new_code_cell(SCENE_CHECKS[name]))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=CELL_TIMEOUT_S,
                                     kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(jupyter_env)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{name} raised in a cell:\n{str(exc)[-3000:]}")
    missing = missing_outputs(nb, name)
    assert not missing, f"{name} ran but lacks: {'; '.join(missing)}"
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out["output_type"] == "error"]
    assert not errors
    if name in SCENE_CHECKS:
        # The pixel test of the embedded-model tests: each named colour at its named cell, the background colour in
        # the free corners (shapes_data.scene_problems). Captions cut short draw a smear and fail here.
        report = scene_report(nb)
        if name == "03_flux2_side_by_side.ipynb":
            check_amd_section(report)
        else:
            assert report["problems"] == {"all good": [], "one cell bad": [], "all bad": []}, \
                f"{name} does not draw {report['caption']!r}: {report['problems']}"


def test_notebooks_are_generated_and_stripped():
    """The committed notebooks are exactly what make_notebooks.py writes: no outputs, no execution counts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in NOTEBOOKS:
        committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        for cell in committed.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, \
                    f"{name} has outputs in git; strip them (python notebooks/make_notebooks.py rewrites it)"
        expected = module.build(name)
        assert [c.source for c in committed.cells] == [c.source for c in expected.cells], \
            f"{name} differs from notebooks/make_notebooks.py; run it and commit the result"
        first_code = next(c for c in committed.cells if c.cell_type == "code")
        assert f'MODEL = "{module.DEFAULT_MODEL}"' in first_code.source, f"{name}: the first code cell must hold MODEL"
    assert (ROOT / "notebooks" / "make_notebooks.py").is_file()


def test_switching_model_is_one_edit():
    """A path or hub id in MODEL gives the real-weights settings (GPU, bfloat16, 1024^2); tiny stays small."""
    import torch

    from fluxlab.widgets import settings_for

    tiny, real = settings_for("tiny"), settings_for("black-forest-labs/FLUX.2-dev")
    assert tiny.small and tiny.load_kwargs() == {"device": None, "dtype": None, "flux2_variant": "dev"}
    assert tiny.image_reference == "reference"
    assert not real.small and (real.height, real.width) == (1024, 1024) and real.dtype == torch.bfloat16
    assert "flux2_variant" not in real.load_kwargs()
    assert real.load_kwargs()["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # real weights: offload decided from free GPU memory and the model's size at 1024^2, before loading
    assert {k: real.load_kwargs()[k] for k in ("offload", "height", "width")} == {"offload": "auto", "height": 1024,
                                                                                  "width": 1024}
    assert "offload" not in tiny.load_kwargs()
    assert settings_for("embedded").small
    with pytest.raises(ValueError, match="MODEL must be"):
        settings_for("")
    assert copy.copy(tiny) == tiny


@pytest.mark.skipif(not browser_available(), reason="without a browser, the headless run of 03 checks these pictures")
def test_amd_section_draws_the_scene(monkeypatch):
    """Notebook 03's AMD section, as the notebook calls it (embedded model, its settings, 144 text tokens): every
    MHA v4 format and how_v3_bf16_cvt mode gives a picture and a verdict, and each passing picture draws the scene."""
    import fluxlab
    from fluxlab.backends.emu_aiter_quant import FORMATS
    from fluxlab.registry import register_padded
    from fluxlab.widgets import settings_for

    monkeypatch.syspath_prepend(str(ROOT))  # the pixel rule lives in training/ (the repository, not the package)
    from training.shapes_data import scene_problems

    settings = settings_for("embedded")
    quant = register_padded("emu_aiter_quant", 128)
    amd = [f"emu_aiter:how_v3_bf16_cvt={mode}" for mode in (0, 1, 2)] + [f"{quant}:format={f}" for f in FORMATS]
    pipe = fluxlab.load_flux2("embedded", **settings.load_kwargs())
    try:
        result = fluxlab.compare_images(pipe, [settings.image_reference] + amd, seed=0,
                                        reference=settings.image_reference, max_sequence_length=144,
                                        **settings.generation())
    finally:
        fluxlab.detach(pipe)
        fluxlab.registry.unregister_backend(quant)
    check_amd_section({"caption": settings.prompt, "verdicts": result.verdicts,
                       "problems": {name: scene_problems(image, settings.prompt)
                                    for name, image in result.images.items()}})
