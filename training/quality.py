"""Quality checks for a trained FLUX.2 pipeline: held-out colour-at-position accuracy and mean attention entropy.

Both the training script (on the GPU) and the CPU tests use these, so the figure in the training log and the figure
the tests assert are computed the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from . import shapes_data

# What the tests and the training log evaluate: 20 held-out captions, half of them with two shapes.
TEST_SCENES = {"n": 20, "seed": 2024, "split": "heldout", "two_shape_fraction": 0.5}
# How they generate: 64x64, 8 Euler steps, true CFG 4.0 (Klein's default scale), text padded to 144 tokens (every
# caption fits in 129).
GENERATION = {"height": 64, "width": 64, "num_inference_steps": 8, "guidance_scale": 4.0,
              "max_sequence_length": 144}


def test_scenes() -> list[shapes_data.Scene]:
    return shapes_data.sample_scenes(**TEST_SCENES)


@dataclasses.dataclass
class HeldoutResult:
    accuracy: float  # fraction of shape mentions whose colour shows at their position
    hits: list[list[bool]]  # per scene, per shape
    images: np.ndarray  # [N, H, W, 3] float in 0..1

    @property
    def single_shape_accuracy(self) -> float:
        return _mean([h[0] for h in self.hits if len(h) == 1])

    @property
    def two_shape_accuracy(self) -> float:
        return _mean([x for h in self.hits if len(h) == 2 for x in h])

    def summary(self) -> str:
        n_shapes = sum(len(h) for h in self.hits)
        return (f"{self.accuracy:.1%} of {n_shapes} shapes in {len(self.hits)} scenes "
                f"(one-shape scenes {self.single_shape_accuracy:.1%}, two-shape scenes {self.two_shape_accuracy:.1%})")


def _mean(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def heldout_accuracy(pipe, scenes: Sequence[shapes_data.Scene], *, seed: int = 0, batch_size: int = 20,
                     **generation) -> HeldoutResult:
    """Generate one image per scene caption and apply the pixel test (``shapes_data.shape_hits``) to each shape."""
    kwargs = {**GENERATION, **generation}
    device = pipe._execution_device
    images, hits = [], []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        generator = torch.Generator(device="cpu").manual_seed(seed + start)
        latents = torch.randn((len(chunk), pipe.transformer.config.in_channels,
                               kwargs["height"] // (2 * pipe.vae_scale_factor),
                               kwargs["width"] // (2 * pipe.vae_scale_factor)), generator=generator)
        out = pipe(prompt=[s.caption for s in chunk], latents=latents.to(device, pipe.transformer.dtype),
                   output_type="np", **kwargs).images
        images.append(out)
        hits.extend(shapes_data.shape_hits(image, scene) for image, scene in zip(out, chunk))
    flat = [x for h in hits for x in h]
    return HeldoutResult(accuracy=_mean(flat), hits=hits, images=np.concatenate(images))


# ---------------------------------------------------------------------------------------------------------------
# Attention entropy: every attention call of the FLUX.2 transformer goes through the module-level
# ``dispatch_attention_fn`` of diffusers' transformer_flux2 (q/k/v [B, S, H, D], after QK-norm and RoPE); wrapping it
# for the duration of a generation sees every layer, head, query and step.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EntropyMeter:
    total: float = 0.0  # sum of per-query entropies, nats
    count: int = 0  # number of (batch, head, query) rows
    keys: int = 0  # sequence length of the last call (log(keys) is the uniform-attention entropy)

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def uniform(self) -> float:
        return math.log(self.keys) if self.keys else float("nan")

    def add(self, query: torch.Tensor, key: torch.Tensor, scale: float | None) -> None:
        q = query.float().transpose(1, 2)  # [B, H, S, D]
        k = key.float().transpose(1, 2)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if k.shape[1] != q.shape[1]:  # grouped-query attention: repeat key heads
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logp = torch.log_softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        self.total += float(entropy.sum())
        self.count += entropy.numel()
        self.keys = k.shape[2]


@contextlib.contextmanager
def measure_attention_entropy() -> Iterator[EntropyMeter]:
    """Within the block, accumulate the softmax entropy of every FLUX.2 attention call (unmasked calls only)."""
    from diffusers.models.transformers import transformer_flux2

    meter = EntropyMeter()
    inner = transformer_flux2.dispatch_attention_fn

    def recording(query, key, value, attn_mask=None, *args, **kwargs):
        if attn_mask is None:
            meter.add(query, key, kwargs.get("scale"))
        return inner(query, key, value, attn_mask, *args, **kwargs)

    transformer_flux2.dispatch_attention_fn = recording
    try:
        yield meter
    finally:
        transformer_flux2.dispatch_attention_fn = inner


def random_init_like(transformer, seed: int = 0):
    """A ``Flux2Transformer2DModel`` of the same config with diffusers' default random initialisation."""
    from diffusers import Flux2Transformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Flux2Transformer2DModel.from_config(transformer.config)
    return torch.nn.Module.to(model, device=transformer.device, dtype=transformer.dtype).eval()


# The entropy comparison: 5 held-out captions, 4 steps, one branch (guidance 1: no CFG), cheap enough for CPU tests.
ENTROPY = {"prompts": 5, "num_inference_steps": 4, "guidance_scale": 1.0}


def entropy_trained_vs_random(pipe, seed: int = 0) -> tuple[EntropyMeter, EntropyMeter]:
    """Mean attention entropy of ``pipe`` and of the same pipeline with a random-init transformer of the same config."""
    prompts = [s.caption for s in test_scenes()[: ENTROPY["prompts"]]]
    generation = {k: v for k, v in ENTROPY.items() if k != "prompts"}
    trained = mean_attention_entropy(pipe, prompts, seed=seed, **generation)
    original = pipe.transformer
    try:
        pipe.transformer = random_init_like(original, seed=seed)
        random = mean_attention_entropy(pipe, prompts, seed=seed, **generation)
    finally:
        pipe.transformer = original
    return trained, random


def mean_attention_entropy(pipe, prompts: Sequence[str], *, seed: int = 0, **generation) -> EntropyMeter:
    """Mean entropy (nats) of the attention rows of every layer, head, query and step of one generation."""
    kwargs = {**GENERATION, **generation}
    with measure_attention_entropy() as meter:
        pipe(prompt=list(prompts), generator=torch.Generator(device="cpu").manual_seed(seed), output_type="latent",
             **kwargs)
    return meter
