"""Random-weight FLUX.2 transformers ([dev]'s architecture or fluxlab's tiny one) and their inputs, identical on
every rank: what parallel runs are checked on."""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..models.tiny import TINY_CONFIGS, random_transformer

TEXT_TOKENS = 512  # FLUX.2 pipelines pad every prompt to max_sequence_length=512

# FLUX.2 [dev]'s transformer config (= diffusers 0.42's Flux2Transformer2DModel defaults), written out so that
# checks can read heads and head_dim without importing diffusers.
DEV_TRANSFORMER = {"patch_size": 1, "in_channels": 128, "num_layers": 8, "num_single_layers": 48,
                   "attention_head_dim": 128, "num_attention_heads": 48, "joint_attention_dim": 15360,
                   "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": (32, 32, 32, 32),
                   "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": True}

TRANSFORMER_CONFIGS = {"tiny": dict(TINY_CONFIGS["dev"]["transformer"]), "dev": DEV_TRANSFORMER}


def build_transformer(size: str = "tiny", *, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                      **overrides):
    """A ``Flux2Transformer2DModel`` of ``size`` ("tiny" or "dev") with seeded random weights on ``device``: the
    same ``seed``, device type and dtype give bit-identical weights on every rank (each builds its own copy)."""
    if size not in TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown transformer size {size!r}; choose one of {sorted(TRANSFORMER_CONFIGS)}")
    config = {**copy.deepcopy(TRANSFORMER_CONFIGS[size]), **overrides}
    return random_transformer(config, device=device, dtype=dtype, seed=seed)


@dataclasses.dataclass
class TransformerInputs:
    """One denoising step's transformer inputs at a resolution (text first, then image tokens, as FLUX.2 runs)."""

    kwargs: dict
    text_tokens: int
    image_tokens: int

    @property
    def seq_lens(self) -> dict[str, int]:
        return {"text": self.text_tokens, "image": self.image_tokens}


def image_tokens(height: int, width: int) -> int:
    """FLUX.2 tokens for an image: VAE x8, then 2x2 patches -> one token per 16x16 pixels."""
    if height % 16 or width % 16:
        raise ValueError(f"FLUX.2 images are multiples of 16 pixels; got {height}x{width}")
    return (height // 16) * (width // 16)


def transformer_inputs(transformer, *, height: int = 1024, width: int = 1024, text_tokens: int = TEXT_TOKENS,
                       batch: int = 1, seed: int = 0, device="cpu", dtype: torch.dtype | None = None,
                       timestep: float = 0.5, guidance: float = 4.0) -> TransformerInputs:
    """Seeded random latents and prompt embeddings with the position ids ``Flux2Pipeline`` builds."""
    config = transformer.config
    dtype = dtype or next(transformer.parameters()).dtype
    rows, cols = height // 16, width // 16
    n_image = image_tokens(height, width)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn(batch, n_image, config.in_channels, generator=generator)
    prompt = torch.randn(batch, text_tokens, config.joint_attention_dim, generator=generator)
    zero = torch.arange(1)
    img_ids = torch.cartesian_prod(zero, torch.arange(rows), torch.arange(cols), zero)  # (t, h, w, l)
    txt_ids = torch.cartesian_prod(zero, zero, zero, torch.arange(text_tokens))
    kwargs = {
        "hidden_states": latents.to(device, dtype),
        "encoder_hidden_states": prompt.to(device, dtype),
        "timestep": torch.full((batch,), timestep, device=device, dtype=dtype),
        "img_ids": img_ids.unsqueeze(0).expand(batch, -1, -1).to(device),
        "txt_ids": txt_ids.unsqueeze(0).expand(batch, -1, -1).to(device),
        "guidance": (torch.full((batch,), guidance, device=device, dtype=torch.float32)
                     if config.guidance_embeds else None),
        "return_dict": False,
    }
    return TransformerInputs(kwargs, text_tokens, n_image)


def run_transformer(transformer, inputs: TransformerInputs) -> torch.Tensor:
    """One forward without autograd; the velocity prediction ``[batch, image_tokens, in_channels]``, waited for when
    context parallelism gathers it (so a discarded output in a timing loop leaves no collective unwaited)."""
    from .engine import wait_collective

    with torch.no_grad():
        return wait_collective(transformer(**inputs.kwargs)[0])
