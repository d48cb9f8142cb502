"""The embedded FLUX.2 [klein]-architecture model: ships offline, draws the captioned colours at the captioned places
on held-out captions, and attends more sharply than a random-init transformer of the same config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusers  # noqa: E402
import transformers  # noqa: E402,F401

from training import quality, shapes_data  # noqa: E402
from fluxlab.models.embedded import EMBEDDED_DIR, load_embedded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    # On a shared 2-core machine, two OpenMP threads that wait for each other run these small operators 5-20x slower
    # than one thread (measured: a [5760, 32] x [32, 96] matmul, 1.4 ms on 1 thread vs 30 ms on 2 under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(one_thread):
    return load_embedded()


@pytest.fixture(scope="module")
def heldout(pipe):
    return quality.heldout_accuracy(pipe, quality.test_scenes())


# --- the data ----------------------------------------------------------------------------------------------------


def test_scenes_are_deterministic_and_captioned_from_their_parameters():
    a, b = shapes_data.sample_scenes(50, seed=3), shapes_data.sample_scenes(50, seed=3)
    assert a == b and a != shapes_data.sample_scenes(50, seed=4)
    scene = shapes_data.Scene(background=4, shapes=(shapes_data.Shape(colour=0, shape=0, position=0),))
    assert scene.caption == "a red circle at the top left on a blue background"
    assert torch.equal(shapes_data.render(a[:4]), shapes_data.render(b[:4]))


def test_heldout_triples_never_appear_in_training_scenes():
    train = shapes_data.sample_scenes(2000, seed=0)
    seen = {(s.colour, s.shape, s.position) for scene in train for s in scene.shapes}
    assert seen.isdisjoint(shapes_data.HELDOUT_TRIPLES)
    # ... while every pair of attributes of a held-out triple does appear.
    for c, s, p in shapes_data.HELDOUT_TRIPLES:
        assert any(t[0] == c and t[1] == s for t in seen) and any(t[0] == c and t[2] == p for t in seen)
        assert any(t[1] == s and t[2] == p for t in seen)
    heldout = quality.test_scenes()
    assert all(s.heldout for scene in heldout for s in scene.shapes)
    assert {scene.caption for scene in heldout}.isdisjoint(scene.caption for scene in train)


def test_pixel_test_passes_on_rendered_ground_truth():
    scenes = shapes_data.sample_scenes(200, seed=5) + quality.test_scenes()
    images = shapes_data.to_uint8(shapes_data.render(scenes))
    assert all(all(shapes_data.shape_hits(image, scene)) for image, scene in zip(images, scenes))


def test_caption_check_reads_the_caption_and_applies_the_pixel_test():
    # What the notebook tests apply to a generated image: the caption parsed back into its scene, then shape_hits
    # plus the background in the free corner cells.
    scenes = shapes_data.sample_scenes(40, seed=6)
    for scene in scenes:
        parsed = shapes_data.parse_caption(scene.caption)
        assert parsed.caption == scene.caption and parsed.background == scene.background
    images = shapes_data.to_uint8(shapes_data.render(scenes))
    assert all(shapes_data.scene_problems(image, scene.caption) == [] for image, scene in zip(images, scenes))
    # The other scene's caption on the same picture is caught, naming the cell that disagrees.
    problems = shapes_data.scene_problems(images[0], scenes[1].caption)
    assert problems and all(" not " in p or "the cell shows" in p for p in problems)
    red_smear = np.full((64, 64, 3), shapes_data.COLOURS["red"], dtype=np.uint8)
    assert shapes_data.scene_problems(red_smear, "a red circle at the top left on a blue background") == [
        "background at the top right: red, not blue", "background at the bottom left: red, not blue",
        "background at the bottom right: red, not blue"]
    with pytest.raises(ValueError, match="on a <colour> background"):
        shapes_data.parse_caption("a red fox in the snow")
    with pytest.raises(ValueError, match="a red fox at the top left"):
        shapes_data.parse_caption("a red fox at the top left on a blue background")


# --- the shipped model -------------------------------------------------------------------------------------------


def test_ships_as_a_diffusers_klein_folder_under_20_mb():
    index = json.loads((EMBEDDED_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"
    files = [p for p in EMBEDDED_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.parent.name for p in weights} == {"transformer", "vae", "text_encoder"}
    size = sum(p.stat().st_size for p in files)
    print(f"\nembedded model: {size / 1e6:.2f} MB in {len(files)} files")
    assert size <= 20e6


def test_loads_offline_with_the_real_classes(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(pipe, diffusers.Flux2KleinPipeline) and type(pipe).__name__ == "Flux2KleinPipeline"
    assert type(pipe.transformer) is diffusers.Flux2Transformer2DModel
    assert type(pipe.vae) is diffusers.AutoencoderKLFlux2
    assert type(pipe.text_encoder).__name__ == "Qwen3ForCausalLM"
    assert pipe.transformer.dtype == torch.float32 and pipe.config.is_distilled is False
    direct = diffusers.Flux2KleinPipeline.from_pretrained(EMBEDDED_DIR, local_files_only=True)
    for name, value in direct.transformer.state_dict().items():
        assert torch.equal(value, pipe.transformer.state_dict()[name]), name


def test_shipped_configs_match_the_training_script():
    spec = importlib.util.spec_from_file_location("train_embedded", ROOT / "training" / "train_embedded.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    for component in ("transformer", "vae"):
        shipped = json.loads((EMBEDDED_DIR / component / "config.json").read_text())
        for key, value in train.CONFIGS[component].items():
            assert shipped[key] == (list(value) if isinstance(value, tuple) else value), (component, key)
    shipped = json.loads((EMBEDDED_DIR / "text_encoder" / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        assert shipped[key] == train.CONFIGS["text_encoder"][key], key


def test_heldout_captions_show_the_named_colour_at_the_named_position(heldout):
    print(f"\nheld-out accuracy ({quality.GENERATION}): {heldout.summary()}")
    assert heldout.images.shape == (quality.TEST_SCENES["n"], 64, 64, 3)
    assert heldout.accuracy >= 0.8


def test_generation_is_a_picture_not_noise(heldout):
    # The background (the caption's last colour) fills the corners' cells that no shape occupies.
    scenes = quality.test_scenes()
    hits = []
    for image, scene in zip(heldout.images, scenes):
        used = {s.position for s in scene.shapes}
        free = [p for p in (0, 2, 6, 8) if p not in used]
        hits += [shapes_data.cell_colour(image, p) == shapes_data.COLOUR_NAMES[scene.background] for p in free]
    print(f"\nbackground colour in free corner cells: {np.mean(hits):.1%}")
    assert np.mean(hits) >= 0.8


def test_trained_attention_is_peakier_than_random_init(pipe):
    trained, random = quality.entropy_trained_vs_random(pipe)
    print(f"\nmean attention entropy ({quality.ENTROPY}; {trained.keys} keys, uniform {trained.uniform:.3f} nats): "
          f"trained {trained.mean:.3f}, random init {random.mean:.3f}")
    assert trained.count == random.count > 0
    assert trained.mean < random.mean


def test_load_flux2_embedded_is_the_shipped_model(pipe):
    from fluxlab.models.load import load_flux2

    loaded = load_flux2("embedded")
    assert isinstance(loaded, diffusers.Flux2KleinPipeline) and type(loaded).__name__ == "Flux2KleinPipeline"
    assert loaded.default_sample_size * loaded.vae_scale_factor == 64
    for name, value in loaded.transformer.state_dict().items():
        assert torch.equal(value, pipe.transformer.state_dict()[name]), name
