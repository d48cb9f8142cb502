"""compare_images on the tiny FLUX.2 model: identical noise, PSNR/SSIM from scikit-image, latent drift, a figure."""

import math
import re

import numpy as np
import pytest
import torch

import fluxlab
from fluxlab.compare.images import compare_images

from _compare_kernels import head_dropped, raises

# Each test runs whole (tiny) generations: 1-3 s on a quiet 2-core machine, 5-25 s when it is shared.
pytestmark = pytest.mark.slow



def test_pipeline_that_bypasses_fluxlab_is_refused():
    from fluxlab.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("dev")  # plain diffusers: attention never reaches fluxlab
    with pytest.raises(RuntimeError, match="never called fluxlab's 'sdpa' backend"):
        compare_images(pipe, ["sdpa", "sdpa_math"], steps=1, text_encoder_out_layers=(1, 2, 3))


@pytest.fixture(scope="module")
def tiny_pipe():
    return fluxlab.load_flux2("tiny", flux2_variant="dev")


def test_identical_backends_give_psnr_inf_and_ssim_one(tiny_pipe):
    result = compare_images(tiny_pipe, ["sdpa", "sdpa"], prompt="a fox", seed=3, steps=3)
    ref, again = result.rows
    assert (ref.backend, again.backend) == ("sdpa", "sdpa#2")
    assert math.isinf(again.psnr) and again.psnr > 0
    assert again.ssim == 1.0
    assert again.max_abs_pixel == 0.0 and again.latent_drift == [0.0, 0.0, 0.0]
    assert again.attention_calls > 0
    image = result.images["sdpa"]
    assert image.shape == (64, 64, 3) and 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0


@pytest.fixture
def broken_kernels_allowed(tiny_pipe):
    """Two user kernels registered and allowed on the tiny model (user backends need the model's opt-in)."""
    from fluxlab.models.attach import attach, detach, state_of
    from fluxlab.models import FLUX2_BACKENDS

    fluxlab.register_backend("image_broken_head", head_dropped)
    fluxlab.register_backend("image_raises", raises)
    previous = state_of(tiny_pipe).chosen_allowed  # None: the default set, which follows the registry
    detach(tiny_pipe)
    attach(tiny_pipe, allowed=FLUX2_BACKENDS | {"image_broken_head", "image_raises"})
    yield
    detach(tiny_pipe)
    attach(tiny_pipe, allowed=previous)
    fluxlab.registry.unregister_backend("image_broken_head")
    fluxlab.registry.unregister_backend("image_raises")


def test_different_kernels_differ_a_little_and_broken_ones_a_lot(tiny_pipe, broken_kernels_allowed):
    result = compare_images(tiny_pipe, ["sdpa", "sdpa_math", "image_broken_head", "image_raises"], seed=0, steps=4)
    rows = result.metrics
    assert 60 < rows["sdpa_math"].psnr < math.inf and rows["sdpa_math"].ssim > 0.999
    assert len(rows["sdpa_math"].latent_drift) == 4 and 0 < rows["sdpa_math"].final_latent_rel_l2 < 1e-4
    assert rows["image_broken_head"].psnr < rows["sdpa_math"].psnr - 20
    assert rows["image_broken_head"].final_latent_rel_l2 > 1e-3
    assert "kernel exploded" in rows["image_raises"].error and "image_raises" not in result.images
    fig = result.figure()
    assert len(fig.axes) >= 2 * 3 + 1  # images, differences, drift (+ colour bar)
    html = result._repr_html_()
    assert "data:image/png;base64," in html and "image_broken_head" in html
    assert "| sdpa_math |" in result.to_markdown()


def test_backend_outside_the_models_allowed_set_is_an_error_row(tiny_pipe):
    from fluxlab.models.attach import state_of

    state = state_of(tiny_pipe)
    fluxlab.register_backend("image_not_allowed", head_dropped)
    before = state.chosen_allowed
    state.allowed = {"sdpa", "reference"}  # a set the user narrowed stays narrowed
    try:
        result = compare_images(tiny_pipe, ["sdpa", "image_not_allowed"], steps=1)
    finally:
        state.chosen_allowed = before
        fluxlab.registry.unregister_backend("image_not_allowed")
    assert "outside this FLUX.2 model's allowed set" in result.metrics["image_not_allowed"].error


def test_same_noise_for_every_backend(tiny_pipe):
    first = compare_images(tiny_pipe, ["sdpa"], seed=11, steps=2)
    second = compare_images(tiny_pipe, ["sdpa"], seed=11, steps=2)
    other = compare_images(tiny_pipe, ["sdpa"], seed=12, steps=2)
    assert np.array_equal(first.images["sdpa"], second.images["sdpa"])
    assert not np.array_equal(first.images["sdpa"], other.images["sdpa"])
    assert torch.equal(first.latents["sdpa"][0], second.latents["sdpa"][0])


def _bad_generation_cases(multiple: int):
    """(id, compare_images kwargs, the same request to fluxlab.generate or None, error class, message fragment)."""
    from fluxlab.errors import InvalidSettingError, InvalidSizeError, LimitExceededError

    odd = multiple + multiple // 2
    return [
        ("empty-prompt", {"prompt": ""}, {}, InvalidSettingError, "prompt must be a non-empty text, got ''"),
        ("blank-prompt", {"prompt": "  "}, {}, InvalidSettingError, "prompt must be a non-empty text, got '  '"),
        ("steps-0", {"steps": 0}, {}, InvalidSettingError, "steps must be a whole number >= 1, got 0"),
        ("steps-1.5", {"steps": 1.5}, {}, InvalidSettingError, "steps must be a whole number >= 1, got 1.5"),
        ("seed-negative", {"seed": -1}, {}, InvalidSettingError, "seed must be a whole number from 0 to 2**63 - 1"),
        ("second-seed-2**64", {"seeds": (0, 2**64)}, {"seed": 2**64}, InvalidSettingError, "got 18446744073709551616"),
        ("second-seed-1.5", {"seeds": [0, 1.5]}, {"seed": 1.5}, InvalidSettingError, "got 1.5"),
        ("no-seeds", {"seeds": ()}, None, InvalidSettingError, "seeds= is empty"),
        ("height-not-a-multiple", {"height": odd}, {}, InvalidSizeError,
         f"height {odd} is not a multiple of {multiple}"),
        ("beyond-the-token-bound", {"height": 4096, "width": 4096}, {}, LimitExceededError,
         "above fluxlab's bound of 16,384"),
        ("guidance-nan", {"guidance_scale": float("nan")}, {}, InvalidSettingError,
         "guidance_scale must be a finite number >= 0"),
        ("text-100000", {"max_sequence_length": 100000}, {}, LimitExceededError,
         "max_sequence_length 100,000 is above fluxlab's bound of 512"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_generation_cases(16))), ids=[c[0] for c in _bad_generation_cases(16)])
def test_bad_generation_arguments_are_refused_before_generating_as_generate_refuses_them(tiny_pipe, case):
    from fluxlab.models.generate import generate
    from fluxlab.models.limits import required_multiple

    _, kwargs, for_generate, error, message = _bad_generation_cases(required_multiple(tiny_pipe))[case]
    ran = []
    handles = [module.register_forward_pre_hook(lambda *_: ran.append(1))
               for module in (tiny_pipe.transformer, tiny_pipe.text_encoder, tiny_pipe.vae)]
    try:
        with pytest.raises(error, match=re.escape(message)) as refused:
            compare_images(tiny_pipe, ["sdpa", "sdpa_math"], **kwargs)
        if for_generate is not None:  # fluxlab.generate says the same about the same request
            request = {k: v for k, v in kwargs.items() if k != "seeds"} | for_generate
            with pytest.raises(error) as generate_refused:
                generate(tiny_pipe, ["sdpa"], **{"prompt": "a fox", **request}, progress=False)
            assert str(generate_refused.value) == str(refused.value)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == []  # refused before the text encoder, the transformer or the VAE ran


def test_numpy_seeds_and_forced_sizes_are_accepted(tiny_pipe):
    from fluxlab.models.limits import required_multiple

    result = compare_images(tiny_pipe, ["sdpa"], seeds=np.array([3]), steps=1, yardstick=False,
                            max_sequence_length=8)
    assert result.settings["seeds"] == [3] and type(result.settings["seeds"][0]) is int
    side = required_multiple(tiny_pipe) * (4096 // required_multiple(tiny_pipe) + 1)  # a side beyond 4096 px: refused
    # unless forced, as generate does
    with pytest.raises(fluxlab.FluxlabError, match="force=True"):
        compare_images(tiny_pipe, ["sdpa"], height=side, width=required_multiple(tiny_pipe), steps=1)
    forced = compare_images(tiny_pipe, ["sdpa"], height=side, width=required_multiple(tiny_pipe), steps=1,
                            force=True, max_sequence_length=8, yardstick=False)
    assert forced.images["sdpa"].shape[:2] == (side, required_multiple(tiny_pipe))
