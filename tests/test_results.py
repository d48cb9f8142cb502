"""Every result object a user gets speaks one protocol (fluxlab/results.py): a readable repr, _repr_html_,
to_dataframe(), to_markdown(), figure() where a picture fits, and save() to JSON with provenance."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fluxlab
from fluxlab.compare import InputSpec
from fluxlab.results import markdown_table

from _flux2 import generate

RUN = dict(prompt="a red circle", height=64, width=64, max_sequence_length=64)
PROVENANCE_KEYS = {"date", "platform", "versions", "git", "model", "command"}


@pytest.fixture(scope="module")
def results():
    """One of each result type, made on the tiny model with real diffusers code (2 steps, 64x64)."""
    pipe = fluxlab.load_flux2("tiny", backend="sdpa")
    try:
        with fluxlab.capture(pipe, layers=["transformer_blocks.0.attn"], steps=[0]) as cap:
            generate(pipe, steps=2)
        made = {
            "ComparisonReport": fluxlab.compare_attention([InputSpec(64, 2, 32)], ["sdpa", "sdpa_math"],
                                                          dtype=torch.float32, progress=False),
            "ImageComparison": fluxlab.compare_images(pipe, ["sdpa", "sdpa_math"], steps=2, **RUN),
            "DriftMap": fluxlab.locate_drift(pipe, "sdpa", "sdpa_math", steps=2, budget=4, **RUN),
            "Frontier": fluxlab.frontier(pipe, ["sdpa_math"], exact="sdpa", steps=2, repeats=1, locate=False, **RUN),
            "AutotuneResult": fluxlab.autotune(pipe, candidates=["sdpa", "sdpa_math"], steps=2, repeats=1,
                                             confirm=False, **RUN),
            "Capture": cap,
            "AttentionRecord": cap.records[0],
            "BackendList": fluxlab.backends(),
        }
    finally:
        fluxlab.detach(pipe)
    return made


FROM_A_MODEL = {"ImageComparison", "DriftMap", "Frontier", "AutotuneResult", "Capture"}
WITH_A_PICTURE = {"ComparisonReport", "ImageComparison", "DriftMap", "Frontier", "AutotuneResult"}


def test_every_result_type_speaks_the_protocol(results, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for kind, result in results.items():
        assert type(result).__name__ == kind
        text = repr(result)
        assert "tensor(" not in text and "array(" not in text and len(text) < 2000, (kind, text[:300])
        html = result._repr_html_()
        assert "<table" in html, kind
        frame = result.to_dataframe()
        assert len(frame) == len(result.table_rows()) >= 1, kind
        assert "| --- |" in result.to_markdown() or "|---|" in result.to_markdown(), kind
        if kind in WITH_A_PICTURE:
            assert result.has_figure
            figure = result.figure()
            assert figure.axes, kind
            plt.close(figure)
        else:
            assert not result.has_figure
            with pytest.raises(NotImplementedError, match="has no picture"):
                result.figure()
        saved = json.loads(result.save(tmp_path / f"{kind}.json").read_text())
        assert saved["result_type"] == kind
        assert PROVENANCE_KEYS <= set(saved["provenance"]), kind
        assert saved["provenance"]["platform"]["vendor"] and saved["provenance"]["versions"]["torch"]
        model = saved["provenance"]["model"]
        if kind in FROM_A_MODEL:
            assert model is not None and model["pipeline"] == "Flux2Pipeline", kind
            assert model["dtype"] == "float32", (kind, model)
        else:
            assert model is None, kind


def test_a_record_names_its_tensors_by_shape(results):
    record = results["AttentionRecord"]
    assert repr(record).startswith("AttentionRecord(transformer_blocks.0.attn/step0")
    assert f"q float32[{', '.join(map(str, record.q.shape))}]" in repr(record)
    row = results["Capture"].table_rows()[0]
    assert row["backend"] == "sdpa" and row["step"] == 0


def test_a_saved_autotune_plan_still_loads(results, tmp_path):
    plan = results["AutotuneResult"]
    loaded = fluxlab.decide.AutotuneResult.load(plan.save(tmp_path / "plan.json"))
    assert loaded.choices == plan.choices and len(loaded.measurements) == len(plan.measurements)


def test_one_table_renderer_formats_numbers_and_escapes_pipes():
    table = markdown_table([{"a": 0.000123456, "b": "x|y", "c": float("nan"), "d": torch.zeros(2, 3)}])
    assert table.splitlines()[2] == "| 0.0001235 | x\\|y | - | float32[2, 3] |"


def test_image_rule_text_is_there_after_a_plain_import():
    code = "import fluxlab; print(fluxlab.compare.IMAGE_RULE_TEXT.splitlines()[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Image verdicts")
