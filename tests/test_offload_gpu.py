"""load_flux2(offload=...) on a GPU: each mode places the tiny pipeline as planned, generates, reports peak memory."""

from __future__ import annotations

import gc

import pytest
import torch

import fluxlab
from fluxlab.models.generate import generate
from fluxlab.models.load import estimate_source
from fluxlab.models.offload import MemoryBudgetError

pytestmark = pytest.mark.gpu
SIZE = dict(height=64, width=64)


def _one_image(pipe):
    (result,) = generate(pipe, "sdpa", prompt="a red circle", steps=2, progress=False, **SIZE)
    return result


@pytest.mark.parametrize("mode", [None, "model", "sequential"])
def test_each_mode_places_the_pipeline_and_reports_peak_memory(mode):
    pipe = fluxlab.load_flux2("tiny", device="cuda", offload=mode, **SIZE)
    try:
        assert pipe.fluxlab_offload.mode == mode
        assert (pipe.transformer.device.type == "cuda") == (mode is None)  # offloaded weights rest off the GPU
        result = _one_image(pipe)
        assert result.manifest["model"]["device"].startswith("cuda")  # the execution device, not where weights rest
        assert result.peak_memory_bytes > 0 and result.manifest["memory"]["peak_allocated_bytes"] > 0
        assert result.manifest["model"]["offload"]["mode"] == mode
    finally:
        fluxlab.detach(pipe)


def test_auto_follows_the_budget_and_refuses_up_front():
    estimate = estimate_source("tiny", "dev", None, **SIZE)
    for budget, mode in ((estimate.peak_bytes(None), None), (estimate.peak_bytes("model"), "model")):
        pipe = fluxlab.load_flux2("tiny", offload="auto", memory_budget=budget, **SIZE)
        try:
            assert pipe.fluxlab_offload.mode == mode and pipe.fluxlab_offload.device.startswith("cuda")
            assert _one_image(pipe).image.size == (64, 64)
        finally:
            fluxlab.detach(pipe)
    del pipe
    gc.collect()  # the pipelines above (and their route tokens) are freed now, not during the refused load
    allocated = torch.cuda.memory_allocated()
    with pytest.raises(MemoryBudgetError, match="refused before loading"):
        fluxlab.load_flux2("tiny", device="cuda", memory_budget=estimate.peak_bytes(None) - 1, **SIZE)
    assert torch.cuda.memory_allocated() == allocated


def test_compare_images_warms_flex_and_reports_peak_gpu_memory():
    from fluxlab.compare import compare_images

    pipe = fluxlab.load_flux2("tiny", device="cuda")
    try:
        result = compare_images(pipe, ["sdpa", "flex"], prompt="a red circle", steps=2, yardstick=False, **SIZE)
    finally:
        fluxlab.detach(pipe)
    assert "flex:" in result.settings["warm_up"] and "sdpa" not in result.settings["warm_up"]
    assert result.settings["peak_memory"].startswith("torch.cuda.max_memory_allocated")
    assert all(row.peak_memory_bytes > 0 for row in result.rows if row.error is None)
