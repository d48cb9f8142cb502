"""fluxlab.load_flux2: the tiny model, a saved folder through diffusers' from_pretrained, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import diffusers  # noqa: E402

import fluxlab  # noqa: E402
from fluxlab.models import load as load_module  # noqa: E402
from fluxlab.models.attach import is_attached, state_of  # noqa: E402
from fluxlab.models.errors import AttachError, ModelSourceError  # noqa: E402

from _flux2 import generate  # noqa: E402


@pytest.fixture(scope="module", params=("dev", "klein"))
def saved(request, tmp_path_factory):
    """A tiny pipeline, its image, and the folder save_pretrained wrote."""
    pipe = fluxlab.load_flux2("tiny", variant=request.param, backend="sdpa")
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    pipe.save_pretrained(folder)
    image = generate(pipe)
    fluxlab.detach(pipe)
    return request.param, folder, image


def test_tiny_comes_back_attached():
    pipe = fluxlab.load_flux2("tiny", variant="klein", backend="reference")
    try:
        # attached: the pipeline's call is guarded by a same-named subclass (models/guard.py), gone at detach
        assert isinstance(pipe, diffusers.Flux2KleinPipeline) and type(pipe).__name__ == "Flux2KleinPipeline"
        assert is_attached(pipe)
        assert str(state_of(pipe).backend) == "reference"
        assert state_of(pipe).allowed == fluxlab.FLUX2_BACKENDS
        with pytest.raises(AttachError, match="already attached.*fluxlab.detach.*set_backend"):
            fluxlab.attach(pipe)
    finally:
        fluxlab.detach(pipe)
    assert type(pipe) is diffusers.Flux2KleinPipeline


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
        fluxlab.load_flux2(folder, variant=other)


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
        fluxlab.load_flux2("fluxlab-tests/no-such-flux2", variant="klein")


def test_embedded_is_reserved_until_it_ships(monkeypatch, tmp_path):
    monkeypatch.setattr(load_module, "EMBEDDED_DIR", tmp_path / "absent")
    with pytest.raises(NotImplementedError, match="embedded FLUX.2 model is not in this install.*tiny"):
        fluxlab.load_flux2("embedded")


def test_backend_outside_the_set_is_refused_before_loading(tmp_path):
    with pytest.raises(fluxlab.BackendNotAllowedError, match="sdpa_math"):
        fluxlab.load_flux2(tmp_path / "never-read", backend="sdpa_math", allowed={"sdpa"})
    with pytest.raises(fluxlab.UnknownBackendError, match="Did you mean"):
        fluxlab.load_flux2("tiny", backend="sdpa_flsh")
