"""Tiny offline FLUX.2 pipelines: real diffusers classes, deterministic weights, save/load round trip, config rules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import diffusers  # noqa: E402
import transformers  # noqa: E402,F401

from fluxlab.models import tiny  # noqa: E402
from fluxlab.models.checkpoint import realign_weights, validate_flux2_config  # noqa: E402
from fluxlab.models.tiny import TINY_CONFIGS, build_tiny_pipeline  # noqa: E402

VARIANTS = ("dev", "klein")
PIPELINE_CLASS = {"dev": "Flux2Pipeline", "klein": "Flux2KleinPipeline"}


def _generate(pipe, **overrides):
    """A short run (2 steps, 64 text tokens) that still goes through every component; 2 CPU cores are shared."""
    kwargs = dict(prompt="a red circle", height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                  max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type="np")
    kwargs.update(overrides)
    return pipe(**kwargs).images


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value
            for name in ("transformer", "vae", "text_encoder")
            for key, value in getattr(pipe, name).state_dict().items()}


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(variant):
    return build_tiny_pipeline(variant)


@pytest.fixture(scope="module")
def image(pipe):
    return _generate(pipe)


# --- construction ------------------------------------------------------------------------------------------------


def test_variant_is_the_real_diffusers_pipeline(pipe, variant):
    assert type(pipe) is getattr(diffusers, PIPELINE_CLASS[variant])
    assert type(pipe.transformer) is diffusers.Flux2Transformer2DModel
    assert type(pipe.vae) is diffusers.AutoencoderKLFlux2
    assert type(pipe.scheduler) is diffusers.FlowMatchEulerDiscreteScheduler
    assert pipe.transformer.config.guidance_embeds is (variant == "dev")
    assert pipe.text_encoder.training is False and pipe.transformer.training is False


def test_generates_a_64x64_pil_image(pipe):
    """The call the notebooks make, with the pipeline's defaults (512 text tokens)."""
    result = pipe(prompt="a red circle", height=64, width=64, num_inference_steps=4, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="pil")
    assert result.images[0].size == (64, 64)
    assert result.images[0].mode == "RGB"


def test_image_is_finite_and_not_constant(image):
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0


def test_transformer_passes_per_step(pipe, variant):
    """[dev] embeds guidance (one pass per step); [klein] runs true CFG (two passes per step when guidance > 1)."""
    passes = []
    handle = pipe.transformer.register_forward_hook(lambda *_: passes.append(1))
    try:
        _generate(pipe, num_inference_steps=3, guidance_scale=4.0, max_sequence_length=16)
        with_guidance = len(passes)
        passes.clear()
        _generate(pipe, num_inference_steps=3, guidance_scale=1.0, max_sequence_length=16)
        without_guidance = len(passes)
    finally:
        handle.remove()
    assert with_guidance == (3 if variant == "dev" else 6)
    assert without_guidance == 3


def test_bfloat16_build_runs():
    pipe = build_tiny_pipeline("klein", dtype=torch.bfloat16)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.bfloat16
    assert _generate(pipe).shape == (1, 64, 64, 3)


def test_tiny_out_layers_are_the_pipeline_defaults(pipe, variant):
    """The tiny text encoders are deep enough for the defaults, so callers pass no tiny-only arguments."""
    import inspect

    default = inspect.signature(type(pipe).__call__).parameters["text_encoder_out_layers"].default
    assert tuple(default) == TINY_CONFIGS[variant]["text_encoder_out_layers"]


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match=r"unknown FLUX.2 variant 'pro'; choose one of \('dev', 'klein'\)"):
        build_tiny_pipeline("pro")


# --- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_weights_and_images(pipe, variant, image):
    again = build_tiny_pipeline(variant, seed=0)
    first, second = _weights(pipe), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert np.array_equal(_generate(again), image)


def test_other_seed_gives_other_weights(pipe, variant):
    other = _weights(build_tiny_pipeline(variant, seed=1))
    ours = _weights(pipe)
    assert not torch.equal(ours["transformer.x_embedder.weight"], other["transformer.x_embedder.weight"])


def test_build_leaves_the_global_rng_alone(variant):
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    build_tiny_pipeline(variant, seed=7)
    assert torch.equal(torch.rand(4), expected)


# --- save_pretrained / from_pretrained ---------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["own_class", "DiffusionPipeline"])
def test_save_and_from_pretrained_round_trip(pipe, variant, image, tmp_path, loader):
    pipe.save_pretrained(tmp_path)
    cls = getattr(diffusers, PIPELINE_CLASS[variant]) if loader == "own_class" else diffusers.DiffusionPipeline
    loaded = cls.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)

    assert type(loaded) is type(pipe)
    assert type(loaded.tokenizer) is type(pipe.tokenizer)
    assert loaded.tokenizer.get_vocab() == pipe.tokenizer.get_vocab()
    assert loaded.tokenizer.chat_template == pipe.tokenizer.chat_template
    assert dict(loaded.scheduler.config) | {"_use_default_values": None} == (
        dict(pipe.scheduler.config) | {"_use_default_values": None})
    saved, reloaded = _weights(pipe), _weights(loaded)
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[key], reloaded[key]) for key in saved)

    # Weights loaded on CPU still live in the memory-mapped file, unaligned: the last bit of some matmuls differs.
    np.testing.assert_allclose(_generate(loaded), image, rtol=0, atol=1e-5)
    realign_weights(loaded)
    assert np.array_equal(_generate(loaded), image)


# --- tokenizers --------------------------------------------------------------------------------------------------


def test_dev_tokenizer_renders_the_mistral_chat_format():
    tokenizer = tiny.build_tiny_tokenizer("dev")
    messages = [[{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                 {"role": "user", "content": [{"type": "text", "text": "a red circle"}]}]]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True, return_dict=True,
                                            return_tensors="pt", padding="max_length", truncation=True, max_length=64)
    assert encoded["input_ids"].shape == (1, 64)
    n_real = int(encoded["attention_mask"].sum())
    text = tokenizer.decode(encoded["input_ids"][0, :n_real])
    assert text == "<s>[SYSTEM_PROMPT]be brief[/SYSTEM_PROMPT][INST]a red circle[/INST]"
    assert (encoded["input_ids"][0, n_real:] == tokenizer.pad_token_id).all()


def test_klein_tokenizer_renders_the_qwen_chat_format():
    tokenizer = tiny.build_tiny_tokenizer("klein")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "a red circle"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert max(ids) < tiny.tiny_vocab_size("klein")


def test_byte_vocabulary_covers_any_text():
    tokenizer = tiny.build_tiny_tokenizer("dev")
    text = "Ünïcödé ✓ 猫 \t\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte: no merges
    assert tokenizer.decode(ids) == text


# --- config rules ------------------------------------------------------------------------------------------------


def _configs(variant="dev"):
    configs = copy.deepcopy(TINY_CONFIGS[variant])
    return configs["transformer"], configs["vae"], configs["text_encoder"], configs["text_encoder_out_layers"]


def _check(transformer, vae, text, out_layers=(10, 20, 30)):
    validate_flux2_config(transformer, vae, text, text_encoder_out_layers=out_layers)


@pytest.mark.parametrize("variant_name", VARIANTS)
def test_tiny_configs_are_valid(variant_name):
    _check(*_configs(variant_name))


def test_live_model_configs_are_accepted(pipe, variant):
    validate_flux2_config(pipe.transformer.config, pipe.vae.config, pipe.text_encoder.config,
                          text_encoder_out_layers=TINY_CONFIGS[variant]["text_encoder_out_layers"])


def test_joint_attention_dim_rule():
    transformer, vae, text, layers = _configs()
    transformer["joint_attention_dim"] = 25
    with pytest.raises(ValueError, match=r"joint_attention_dim \(25\) must be 3 x the text encoder hidden size "
                                         r"\(8\) = 24.*set joint_attention_dim=24"):
        _check(transformer, vae, text, layers)


def test_joint_attention_dim_follows_the_number_of_stacked_layers():
    transformer, vae, text, _ = _configs()
    with pytest.raises(ValueError, match=r"must be 1 x the text encoder hidden size \(8\) = 8"):
        _check(transformer, vae, text, (1,))


def test_in_channels_rule():
    transformer, vae, text, layers = _configs()
    transformer["in_channels"] = 12
    with pytest.raises(ValueError, match=r"in_channels \(12\) must be 4 x the VAE latent_channels \(4\) = 16.*"
                                         r"set in_channels=16"):
        _check(transformer, vae, text, layers)


def test_rope_axes_must_sum_to_head_dim():
    transformer, vae, text, layers = _configs()
    transformer["axes_dims_rope"] = (4, 4, 4, 8)
    with pytest.raises(ValueError, match=r"sum\(axes_dims_rope\) = sum\(\(4, 4, 4, 8\)\) = 20 must equal "
                                         r"attention_head_dim \(16\).*axes_dims_rope=\(4, 4, 4, 4\)"):
        _check(transformer, vae, text, layers)


def test_rope_axes_need_four_entries():
    transformer, vae, text, layers = _configs()
    transformer["axes_dims_rope"] = (8, 8)
    with pytest.raises(ValueError, match=r"axes_dims_rope \(8, 8\) must have 4 entries"):
        _check(transformer, vae, text, layers)


def test_rope_axes_must_be_even():
    transformer, vae, text, layers = _configs()
    transformer["axes_dims_rope"] = (3, 5, 4, 4)
    with pytest.raises(ValueError, match=r"every axes_dims_rope entry must be even"):
        _check(transformer, vae, text, layers)


def test_out_layers_must_exist_in_the_text_encoder():
    transformer, vae, text, layers = _configs()
    text["text_config"]["num_hidden_layers"] = 3
    with pytest.raises(ValueError, match=r"text_encoder_out_layers \(10, 20, 30\) index hidden states of a text "
                                         r"encoder with num_hidden_layers=3.*text_encoder_out_layers=\(1, 2, 3\)"):
        _check(transformer, vae, text, layers)
    _check(transformer, vae, text, (1, 2, 3))  # the fix the message names


def test_out_channels_rule():
    transformer, vae, text, layers = _configs()
    transformer["out_channels"] = 8
    with pytest.raises(ValueError, match=r"out_channels \(8\) must equal in_channels \(16\)"):
        _check(transformer, vae, text, layers)


def test_patch_size_rules():
    transformer, vae, text, layers = _configs()
    transformer["patch_size"] = 2
    vae["patch_size"] = (1, 1)
    with pytest.raises(ValueError) as error:
        _check(transformer, vae, text, layers)
    assert "patch_size (2) must be 1" in str(error.value)
    assert "the VAE patch_size (1, 1) must be (2, 2)" in str(error.value)


def test_vae_group_norm_rule():
    transformer, vae, text, layers = _configs()
    vae["block_out_channels"] = (8, 8, 8, 6)
    with pytest.raises(ValueError, match=r"norm_num_groups \(4\) must divide every block_out_channels entry; \[6\]"):
        _check(transformer, vae, text, layers)


def test_vae_block_count_rule():
    transformer, vae, text, layers = _configs()
    vae["block_out_channels"] = (8, 8, 8)
    with pytest.raises(ValueError, match=r"4 down_block_types but 3 block_out_channels"):
        _check(transformer, vae, text, layers)


def test_every_broken_rule_is_reported_at_once():
    transformer, vae, text, layers = _configs()
    transformer["joint_attention_dim"] = 25
    transformer["in_channels"] = 12
    with pytest.raises(ValueError) as error:
        _check(transformer, vae, text, layers)
    assert str(error.value).count("\n- ") == 2


def test_build_validates_its_configs(monkeypatch):
    broken = copy.deepcopy(TINY_CONFIGS["klein"])
    broken["transformer"]["joint_attention_dim"] = 25
    monkeypatch.setitem(TINY_CONFIGS, "klein", broken)
    with pytest.raises(ValueError, match=r"joint_attention_dim \(25\)"):
        build_tiny_pipeline("klein")
