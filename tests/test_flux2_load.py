"""fluxlab.load_flux2: the tiny model, a saved folder through diffusers' from_pretrained, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import diffusers  # noqa: E402

import fluxlab  # noqa: E402
from fluxlab.models import load as load_module  # noqa: E402
from fluxlab.models.attach import is_attached, state_of  # noqa: E402
from fluxlab.errors import AttachError, LoadArgumentError, ModelSourceError  # noqa: E402

from _flux2 import generate  # noqa: E402


@pytest.fixture(scope="module", params=("dev", "klein"))
def saved(request, tmp_path_factory):
    """A tiny pipeline, its image, and the folder save_pretrained wrote."""
    pipe = fluxlab.load_flux2("tiny", flux2_variant=request.param, backend="sdpa")
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    pipe.save_pretrained(folder)
    image = generate(pipe)
    fluxlab.detach(pipe)
    return request.param, folder, image


def test_tiny_comes_back_attached():
    pipe = fluxlab.load_flux2("tiny", flux2_variant="klein", backend="reference")
    try:
        # attached: the pipeline's call is guarded by a same-named subclass (models/attach.py), gone at detach
        assert isinstance(pipe, diffusers.Flux2KleinPipeline) and type(pipe).__name__ == "Flux2KleinPipeline"
        assert is_attached(pipe)
        assert str(state_of(pipe).backend) == "reference"
        assert state_of(pipe).allowed == fluxlab.models.FLUX2_BACKENDS
        with pytest.raises(AttachError, match="already attached.*fluxlab.detach.*set_backend"):
            fluxlab.attach(pipe)
    finally:
        fluxlab.detach(pipe)
    assert isinstance(pipe, diffusers.Flux2KleinPipeline)  # attached: a guarded subclass of the same name


def test_save_pretrained_round_trip_is_bit_identical(saved):
    variant, folder, image = saved
    pipe = fluxlab.load_flux2(str(folder), backend="sdpa")  # variant read from model_index.json
    try:
        assert type(pipe).__name__ == {"dev": "Flux2Pipeline", "klein": "Flux2KleinPipeline"}[variant]
        assert np.array_equal(generate(pipe), image)
    finally:
        fluxlab.detach(pipe)


def test_a_variant_that_disagrees_with_the_folder_is_refused(saved):
    variant, folder, _ = saved
    other = "klein" if variant == "dev" else "dev"
    with pytest.raises(ValueError, match=f"variant='{other}'"):
        fluxlab.load_flux2(folder, flux2_variant=other)


# -- diffusers' keyword names ----------------------------------------------------------------------------------


def test_diffusers_weight_variant_reads_the_variant_files(tmp_path):
    """variant= is diffusers' weight-file variant, passed to from_pretrained; fluxlab's dev/klein is flux2_variant."""
    import torch

    pipe = fluxlab.load_flux2("tiny", flux2_variant="klein", backend="sdpa")
    fluxlab.detach(pipe)
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert list(tmp_path.glob("transformer/*.fp16.safetensors")), "diffusers wrote no fp16-variant files"
    loaded = fluxlab.load_flux2(tmp_path, variant="fp16", torch_dtype=torch.float32, backend="sdpa")
    try:
        assert isinstance(loaded, diffusers.Flux2KleinPipeline) and loaded.transformer.dtype == torch.float32
        for name, value in pipe.transformer.state_dict().items():
            assert torch.equal(value, loaded.transformer.state_dict()[name]), name
    finally:
        fluxlab.detach(loaded)
    with pytest.raises(LoadArgumentError, match="variant='fp16'.*'tiny' has none to choose"):
        fluxlab.load_flux2("tiny", variant="fp16")


def test_old_variant_meaning_and_torch_dtype_still_work():
    import torch

    with pytest.warns(DeprecationWarning, match=r"flux2_variant='klein'"):
        pipe = fluxlab.load_flux2("tiny", variant="klein")
    fluxlab.detach(pipe)
    assert isinstance(pipe, diffusers.Flux2KleinPipeline)  # attached: a guarded subclass of the same name
    pipe = fluxlab.load_flux2("tiny", torch_dtype=torch.bfloat16)  # diffusers' older name for dtype
    fluxlab.detach(pipe)
    assert pipe.transformer.dtype == torch.bfloat16
    with pytest.raises(LoadArgumentError, match="dtype=torch.float32 and torch_dtype=torch.bfloat16 disagree"):
        fluxlab.load_flux2("tiny", dtype=torch.float32, torch_dtype=torch.bfloat16)
    with pytest.raises(LoadArgumentError, match="flux2_variant='dev' and variant='klein' disagree"):
        fluxlab.load_flux2("tiny", flux2_variant="dev", variant="klein")
    with pytest.raises(LoadArgumentError, match="unknown FLUX.2 variant flux2_variant='schnell'"):
        fluxlab.load_flux2("tiny", flux2_variant="schnell")


def test_num_inference_steps_is_steps_everywhere_fluxlab_generates():
    pipe = fluxlab.load_flux2("tiny", backend="sdpa")
    try:
        common = dict(prompt="a red circle", height=64, width=64, max_sequence_length=64)
        ours = fluxlab.locate_drift(pipe, "sdpa", "sdpa_math", steps=2, budget=2, **common)
        theirs = fluxlab.locate_drift(pipe, "sdpa", "sdpa_math", num_inference_steps=2, budget=2, **common)
        assert theirs.steps == ours.steps == 2
        generated = fluxlab.generate(pipe, ["sdpa"], num_inference_steps=2, progress=False, **common)
        assert generated[0].manifest["steps"] == 2
        with pytest.raises(fluxlab.FluxlabError, match="steps=3 and num_inference_steps=2 disagree"):
            fluxlab.locate_drift(pipe, "sdpa", "sdpa_math", steps=3, num_inference_steps=2, **common)
    finally:
        fluxlab.detach(pipe)


def test_inconsistent_config_is_named_before_loading(saved, tmp_path):
    import shutil

    _, folder, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config_path = broken / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["joint_attention_dim"] = 25
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"joint_attention_dim \(25\) must be 3 x the text encoder hidden size"):
        fluxlab.load_flux2(broken)


def test_unknown_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelSourceError, match="no-such-model.*does not exist.*model_index.json"):
        fluxlab.load_flux2(str(missing))


def test_folder_without_model_index(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError, match="has no model_index.json.*weights.safetensors"):
        fluxlab.load_flux2(tmp_path)


def test_hub_id_offline_says_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE.*--local-dir.*load_flux2"):
        fluxlab.load_flux2("fluxlab-tests/no-such-flux2", flux2_variant="klein")


def test_embedded_is_reserved_until_it_ships(monkeypatch, tmp_path):
    monkeypatch.setattr(load_module, "EMBEDDED_DIR", tmp_path / "absent")
    with pytest.raises(NotImplementedError, match="embedded FLUX.2 model is not in this install.*tiny"):
        fluxlab.load_flux2("embedded")


def test_backend_outside_the_set_is_refused_before_loading(tmp_path):
    with pytest.raises(fluxlab.errors.BackendNotAllowedError, match="sdpa_math"):
        fluxlab.load_flux2(tmp_path / "never-read", backend="sdpa_math", allowed={"sdpa"})
    with pytest.raises(fluxlab.errors.UnknownBackendError, match="Did you mean"):
        fluxlab.load_flux2("tiny", backend="sdpa_flsh")
