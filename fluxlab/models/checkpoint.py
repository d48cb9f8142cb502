"""Checks on FLUX.2 checkpoints before and after ``from_pretrained``: component configs that fit together, and
CPU-loaded weights copied out of the memory-mapped file."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def config_dict(config: Any) -> dict[str, Any]:
    """A dict, a diffusers ``FrozenDict`` or a transformers ``PretrainedConfig`` as a plain dict."""
    if config is None:
        return {}
    if not isinstance(config, Mapping) and hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def default_out_layers(pipeline_class) -> tuple[int, ...]:
    """The ``text_encoder_out_layers`` a pipeline call uses when the caller passes none."""
    return tuple(inspect.signature(pipeline_class.__call__).parameters["text_encoder_out_layers"].default)


def validate_flux2_config(transformer_config: Any, vae_config: Any, text_config: Any, *,
                          text_encoder_out_layers: Sequence[int] = (10, 20, 30)) -> None:
    """Check that FLUX.2 component configs (dicts, ``FrozenDict`` or transformers configs) fit together; raise
    ``ValueError`` naming each broken rule and its fix. ``text_encoder_out_layers``: the pipeline call's argument."""
    tf, vae, text = config_dict(transformer_config), config_dict(vae_config), config_dict(text_config)
    text = config_dict(text.get("text_config")) or text  # Mistral3's language model, or the config itself
    out_layers = tuple(text_encoder_out_layers)
    reasons: list[str] = []

    head_dim = tf.get("attention_head_dim", 128)
    axes = tuple(tf.get("axes_dims_rope", (32, 32, 32, 32)))
    even_split = (head_dim // 4,) * 4
    if len(axes) != 4:
        reasons.append(f"axes_dims_rope {axes} must have 4 entries, one per position-id coordinate (t, h, w, l) the "
                       f"pipelines build; split attention_head_dim ({head_dim}) in 4, e.g. {even_split}.")
    if sum(axes) != head_dim:
        reasons.append(f"sum(axes_dims_rope) = sum({axes}) = {sum(axes)} must equal attention_head_dim ({head_dim}): "
                       f"RoPE rotates every channel of a head; use e.g. axes_dims_rope={even_split}.")
    if any(a % 2 for a in axes):
        reasons.append(f"every axes_dims_rope entry must be even (RoPE rotates channel pairs); got {axes}.")

    text_hidden = text.get("hidden_size")
    joint = tf.get("joint_attention_dim", 15360)
    if text_hidden is not None and joint != len(out_layers) * text_hidden:
        stacked = len(out_layers) * text_hidden
        reasons.append(f"joint_attention_dim ({joint}) must be {len(out_layers)} x the text encoder hidden size "
                       f"({text_hidden}) = {stacked}: the prompt embedding stacks {len(out_layers)} hidden-state "
                       f"layers (text_encoder_out_layers={out_layers}); set joint_attention_dim={stacked}.")
    depth = text.get("num_hidden_layers")
    if depth is not None and any(not -(depth + 1) <= i <= depth for i in out_layers):
        reasons.append(f"text_encoder_out_layers {out_layers} index hidden states of a text encoder with "
                       f"num_hidden_layers={depth} (valid indices 0..{depth}); pass text_encoder_out_layers=(1, 2, 3) "
                       f"to the pipeline call for a shallow encoder, or give it at least {max(out_layers)} layers.")

    latent = vae.get("latent_channels", 32)
    in_channels = tf.get("in_channels", 128)
    if in_channels != 4 * latent:
        reasons.append(f"in_channels ({in_channels}) must be 4 x the VAE latent_channels ({latent}) = {4 * latent}: "
                       f"the pipeline packs 2x2 latent patches into channels; set in_channels={4 * latent}.")
    if tf.get("out_channels") not in (None, in_channels):
        reasons.append(f"out_channels ({tf['out_channels']}) must equal in_channels ({in_channels}) or be None: the "
                       "transformer predicts the velocity of its own input.")
    if tf.get("patch_size", 1) != 1:
        reasons.append(f"patch_size ({tf['patch_size']}) must be 1: the pipelines patchify latents 2x2 themselves; "
                       "set patch_size=1.")
    if tuple(vae.get("patch_size", (2, 2))) != (2, 2):
        reasons.append(f"the VAE patch_size {tuple(vae['patch_size'])} must be (2, 2): the pipelines hard-code 2x2 "
                       "packing.")

    groups = vae.get("norm_num_groups", 32)
    channels = tuple(vae.get("block_out_channels", (128, 256, 512, 512)))
    bad = sorted({c for c in channels + tuple(vae.get("decoder_block_out_channels") or ()) if c % groups})
    if bad:
        reasons.append(f"VAE norm_num_groups ({groups}) must divide every block_out_channels entry; {bad} are not "
                       f"multiples (GroupNorm). Pick channels that are multiples of {groups}, or fewer groups.")
    if len(vae.get("down_block_types", ())) not in (0, len(channels)):
        reasons.append(f"the VAE has {len(vae['down_block_types'])} down_block_types but {len(channels)} "
                       "block_out_channels; give one channel count per block.")

    if reasons:
        raise ValueError("FLUX.2 config is inconsistent:\n- " + "\n- ".join(reasons))


def realign_weights(pipe) -> None:
    """Copy every weight and buffer of ``pipe``'s models into freshly allocated tensors, in place.

    ``from_pretrained`` on CPU leaves weights as views of the memory-mapped safetensors file, at addresses that are
    not 64-byte aligned, where CPU matmul kernels round the last bit differently. After this copy a loaded pipeline
    reproduces the pipeline it was saved from bit for bit. Not needed on GPU: moving a model there copies it anyway.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            with torch.no_grad():
                for tensor in [*component.parameters(), *component.buffers()]:
                    tensor.data = tensor.data.clone()
