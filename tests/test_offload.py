"""load_flux2(offload=...): validated values, memory estimates that match the real models, refusals before loading."""

from __future__ import annotations

import json
import re
import shutil
import struct

import pytest
import torch

import fluxlab
from fluxlab.models.load import EMBEDDED_DIR, estimate_source
from fluxlab.models.offload import (MemoryBudgetError, OffloadError, PeakMemory, estimate_folder, estimate_pipeline,
                                    plan_offload)


def stored_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and persistent buffers, each shared tensor once: what a checkpoint stores."""
    tensors = {id(t): t for t in module.parameters()}
    for sub in module.modules():
        tensors.update({id(b): b for n, b in sub.named_buffers(recurse=False)
                        if n not in sub._non_persistent_buffers_set})
    return list(tensors.values())


def stored_elements(module: torch.nn.Module) -> int:
    return sum(t.numel() for t in stored_tensors(module))


def models_of(pipe) -> dict[str, torch.nn.Module]:
    return {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


@pytest.fixture(scope="module")
def embedded():
    pipe = fluxlab.load_flux2("embedded")
    yield pipe
    fluxlab.detach(pipe)


# -- validation ----------------------------------------------------------------------------------------------------


def test_unknown_offload_value_is_refused_with_the_choices():
    with pytest.raises(OffloadError, match=r"offload='cpu' is not one of None, 'model', 'sequential', 'auto'"):
        fluxlab.load_flux2("tiny", offload="cpu")


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloading_to_the_cpu_is_refused_with_why(mode):
    with pytest.raises(OffloadError, match=rf"offload='{mode}' keeps weights in host memory and moves them to an "
                                           r"accelerator.*'cpu' is the CPU.*offload=None"):
        fluxlab.load_flux2("tiny", offload=mode, device="cpu")


def test_auto_on_the_cpu_means_no_offload_and_says_so():
    pipe = fluxlab.load_flux2("tiny", offload="auto", device="cpu", height=64, width=64)
    try:
        plan = pipe.fluxlab_offload
        assert plan.requested == "auto" and plan.mode is None
        assert "no accelerator here, so no offload" in plan.reason and "no offload" in str(plan)
        assert plan.estimate is not None and plan.estimate.weight_bytes > 0
        assert pipe.transformer.device.type == "cpu" and not hasattr(pipe, "_all_hooks") or not pipe._all_hooks
        image = pipe(prompt="a red circle", height=32, width=32, num_inference_steps=1,
                     generator=torch.Generator().manual_seed(0), output_type="np").images
        assert image.shape == (1, 32, 32, 3)
    finally:
        fluxlab.detach(pipe)


def test_default_is_no_offload_and_no_estimate():
    pipe = fluxlab.load_flux2("tiny")
    try:
        assert pipe.fluxlab_offload.mode is None and pipe.fluxlab_offload.requested is None
        assert pipe.fluxlab_offload.estimate is None and "no offload asked" in pipe.fluxlab_offload.reason
    finally:
        fluxlab.detach(pipe)


# -- estimates -----------------------------------------------------------------------------------------------------


def test_header_estimate_matches_the_loaded_embedded_model(embedded):
    estimate = estimate_folder(EMBEDDED_DIR, height=64, width=64)
    assert estimate.source == "safetensors headers"
    models = models_of(embedded)
    assert set(estimate.components) == set(models)
    for name, model in models.items():
        assert estimate.components[name].elements == stored_elements(model), name
        assert estimate.components[name].weight_bytes == sum(t.numel() * t.element_size()
                                                            for t in stored_tensors(model)), name
    bf16 = estimate_folder(EMBEDDED_DIR, dtype=torch.bfloat16, height=64, width=64)
    floating = sum(t.numel() for m in models.values() for t in stored_tensors(m) if t.is_floating_point())
    assert estimate.weight_bytes - bf16.weight_bytes == 2 * floating  # fp32 -> bf16; integer buffers keep theirs


def test_config_estimate_matches_when_no_weights_are_there(embedded, tmp_path):
    """A Hub repository's configs alone (no weights downloaded): components built on the meta device."""
    for item in EMBEDDED_DIR.rglob("*.json"):
        target = tmp_path / item.relative_to(EMBEDDED_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(item, target)
    estimate = estimate_folder(tmp_path, height=64, width=64)
    assert estimate.source == "configs (meta device)"
    for name, model in models_of(embedded).items():
        assert estimate.components[name].elements == stored_elements(model), name


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_tiny_estimate_is_made_on_the_meta_device_and_matches(variant):
    estimate = estimate_source("tiny", variant, None, 64, 64)
    assert estimate.source == "configs (meta device)"
    pipe = fluxlab.load_flux2("tiny", flux2_variant=variant)
    try:
        for name, model in models_of(pipe).items():
            assert estimate.components[name].elements == stored_elements(model), name
    finally:
        fluxlab.detach(pipe)


def test_full_size_dev_transformer_is_32_billion_parameters_on_the_meta_device():
    from diffusers import Flux2Transformer2DModel

    with torch.device("meta"):
        transformer = Flux2Transformer2DModel()  # diffusers' defaults are FLUX.2 [dev]'s
    size = estimate_pipeline(type("P", (), {"components": {"transformer": transformer}})(),
                             dtype=torch.bfloat16).components["transformer"]
    assert 32.0e9 < size.elements < 32.4e9  # the published 32.2 B
    assert size.weight_bytes == 2 * size.elements


def test_activation_margin_grows_with_the_image():
    small, large = (estimate_source("tiny", "dev", None, side, side) for side in (256, 1024))
    assert large.activation_bytes > small.activation_bytes
    assert large.weight_bytes == small.weight_bytes


# -- budgets -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def estimate():
    return estimate_folder(EMBEDDED_DIR, dtype=torch.bfloat16, height=64, width=64)


def test_auto_picks_the_first_mode_that_fits(estimate):
    need = {mode: estimate.peak_bytes(mode) for mode in (None, "model", "sequential")}
    assert need[None] > need["model"] > need["sequential"]
    for budget, mode in ((need[None], None), (need[None] - 1, "model"), (need["model"] - 1, "sequential")):
        plan = plan_offload(estimate, "auto", "cuda", memory_budget=budget)
        assert plan.mode == mode and plan.budget_bytes == budget and plan.device.startswith("cuda")
        assert f"offload={mode!r}" in plan.reason and plan.peak_estimate_bytes == need[mode]
    with pytest.raises(MemoryBudgetError, match="cannot run on cuda.* even offloaded") as caught:
        plan_offload(estimate, "auto", "cuda", memory_budget=need["sequential"] - 1)
    assert caught.value.plan.estimate is estimate


def test_an_explicit_mode_that_does_not_fit_names_one_that_does(estimate):
    budget = estimate.peak_bytes("model")
    with pytest.raises(MemoryBudgetError, match=r"refused before loading: with offload=None .* offload='model' fits"):
        plan_offload(estimate, None, "cuda", memory_budget=budget)
    seen = []
    plan = plan_offload(estimate, "model", "cuda", memory_budget=lambda device: seen.append(device) or budget)
    assert plan.mode == "model" and seen == [torch.device("cuda")]


def test_auto_without_an_estimate_takes_model_offload():
    plan = plan_offload(None, "auto", "cuda", memory_budget=10**12)
    assert plan.mode == "model" and "no memory estimate" in plan.reason


def _headers_only(folder):
    """Cut every safetensors file after its header: the estimate still works, loading cannot."""
    for path in folder.rglob("*.safetensors"):
        data = path.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        path.write_bytes(data[: 8 + length])


def test_refused_before_any_weight_loads(tmp_path):
    pipe = fluxlab.load_flux2("tiny", flux2_variant="klein")
    pipe.save_pretrained(tmp_path)
    fluxlab.detach(pipe)
    _headers_only(tmp_path)
    estimate = estimate_folder(tmp_path, height=64, width=64)
    with pytest.raises(MemoryBudgetError, match=r"needs ~.* on the CPU \(weights .*from safetensors headers\)"):
        fluxlab.load_flux2(tmp_path, memory_budget=estimate.peak_bytes(None) - 1, height=64, width=64)
    with pytest.raises(Exception) as loading:  # with room, loading starts, and fails on the cut files
        fluxlab.load_flux2(tmp_path, memory_budget=estimate.peak_bytes(None), height=64, width=64)
    assert not isinstance(loading.value, MemoryBudgetError)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "Flux2KleinPipeline"


def test_peak_memory_is_not_claimed_on_the_cpu():
    with PeakMemory("cpu") as peak:
        torch.ones(1000).sum()
    assert peak.bytes is None and peak.label == "peak GPU memory n/a on CPU"
    assert peak.as_dict()["peak_allocated_bytes"] is None


@pytest.mark.slow
def test_full_size_dev_offload_benchmark_dry_run(tmp_path, monkeypatch):
    """benchmarks/flux2_offload.py up to the GPU part: [dev]'s real configs (no weights), an 80 GB budget."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "flux2_offload.py"
    spec = importlib.util.spec_from_file_location("flux2_offload", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--dry-run", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["benchmarks/flux2_offload.py", *argv])  # as the command line runs it
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "flux2_offload.json").read_text())
    refused = result["without_offload"]
    assert refused["refused"] and refused["gpu_bytes_allocated_by_the_call"] == 0
    assert "refused before loading: with offload=None" in refused["message"]
    assert "offload='model' fits" in refused["message"]
    components = result["auto"]["estimate"]["components"]
    assert 32.0e9 < components["transformer"]["elements"] < 32.4e9  # FLUX.2 [dev]: 32.2 B
    assert 23.5e9 < components["text_encoder"]["elements"] < 24.5e9  # Mistral-Small-3.1: ~24 B
    assert 100 * 1024**3 < result["auto"]["estimate"]["weight_bytes"] < 110 * 1024**3  # ~112 GB in bf16
    assert result["auto"]["mode"] == "model" and result["text_encoder"]["layers"] == 40
    # when, where and with what it ran, recorded by the script (the README's offload block shows the date)
    made, env = result["provenance"], result["environment"]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00", d) for d in (made["date"], env["date"]))
    assert made["versions"]["fluxlab"] == fluxlab.__version__ and env["torch"] == torch.__version__
    assert "flux2_offload.py" in env["command"] and "--dry-run" in env["command"]
