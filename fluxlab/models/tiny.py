"""Tiny, randomly initialised FLUX.2 pipelines, built offline from the real diffusers and transformers classes.

``build_tiny_pipeline("dev")`` is a real ``diffusers.Flux2Pipeline``, ``build_tiny_pipeline("klein")`` a real
``diffusers.Flux2KleinPipeline``: the same code paths as the released checkpoints (prompt encoding, RoPE ids,
attention processors, scheduler, VAE decode, ``save_pretrained``/``from_pretrained``) at toy sizes, with nothing
downloaded. ``validate_flux2_config`` checks the rules that tie the component configs together.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

VARIANTS = ("dev", "klein")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown FLUX.2 variant {variant!r}; choose one of {VARIANTS}.")
    return variant


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: a byte-level vocabulary (every byte is one token, no merges) plus the special tokens each chat
# template writes. Text-only: FLUX.2 [dev] ships a PixtralProcessor, which needs torchvision; for text prompts
# the pipeline only calls ``apply_chat_template`` on it, and a plain fast tokenizer answers that call the same way.
# ---------------------------------------------------------------------------------------------------------------

# Mistral Small 3.1 style: [SYSTEM_PROMPT] ... [/SYSTEM_PROMPT][INST] ... [/INST]; content may be a string or the
# list-of-parts form that Flux2Pipeline's ``format_input`` builds ({"type": "text", "text": ...}).
_MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}"
    "{%- for part in message['content'] if part['type'] != 'text' %}"
    "{{- raise_exception('the tiny FLUX.2 tokenizer is text-only; got a ' ~ part['type'] ~ ' part') }}"
    "{%- endfor %}"
    "{%- set text = message['content'] | map(attribute='text') | join('') %}"
    "{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' ~ text ~ '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' ~ text ~ '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- text ~ eos_token }}"
    "{%- else %}{{- raise_exception('unknown chat role: ' ~ message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Qwen3 style ChatML; ``enable_thinking=False`` (what Flux2KleinPipeline passes) writes an empty think block.
_QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ text ~ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

TOKENIZER_SPECS: dict[str, dict[str, Any]] = {
    "dev": {
        # Special tokens take the first ids, then the 256 byte characters.
        "special_tokens": ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
                           "[/SYSTEM_PROMPT]", "[IMG]"),
        "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        "chat_template": _MISTRAL_CHAT_TEMPLATE,
    },
    "klein": {
        "special_tokens": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        "roles": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        "chat_template": _QWEN_CHAT_TEMPLATE,
    },
}


def _byte_characters() -> list[str]:
    """The characters byte-level BPE writes for bytes 0..255 (the GPT-2 / ``tokenizers`` ByteLevel convention)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:  # control bytes, space, and a few Latin-1 gaps move above 255
            chars[byte] = chr(256 + shift)
            shift += 1
    return [chars[byte] for byte in range(256)]


def _byte_vocab(special_tokens: Sequence[str]) -> dict[str, int]:
    vocab = {token: i for i, token in enumerate(special_tokens)}
    for char in _byte_characters():
        vocab[char] = len(vocab)
    return vocab


def _token_id(variant: str, token: str) -> int:
    return TOKENIZER_SPECS[variant]["special_tokens"].index(token)


def tiny_vocab_size(variant: str) -> int:
    """Number of token ids the tiny tokenizer of ``variant`` produces (special tokens + 256 bytes)."""
    return len(TOKENIZER_SPECS[_check_variant(variant)]["special_tokens"]) + 256


def build_tiny_tokenizer(variant: str = "dev"):
    """A byte-level tokenizer with the chat template ``variant``'s pipeline expects, built without downloads."""
    from tokenizers import AddedToken

    spec = TOKENIZER_SPECS[_check_variant(variant)]
    vocab = _byte_vocab(spec["special_tokens"])
    specials = [AddedToken(t, special=True, normalized=False) for t in spec["special_tokens"]]
    if variant == "klein":
        # The class Flux2KleinPipeline is typed with; its own __init__ builds the byte-level BPE from vocab/merges,
        # so save_pretrained/from_pretrained rebuild exactly the same tokenizer.
        from transformers import Qwen2TokenizerFast

        tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], chat_template=spec["chat_template"], **spec["roles"])
    else:
        from tokenizers import Tokenizer, decoders, pre_tokenizers
        from tokenizers.models import BPE
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=spec["roles"]["unk_token"]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=spec["chat_template"],
                                            **spec["roles"])
    tokenizer.add_special_tokens({"extra_special_tokens": specials})
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Component configs, as data.
# ---------------------------------------------------------------------------------------------------------------

_TEXT_HIDDEN = 8  # text encoder hidden size; FLUX.2 stacks 3 of its hidden-state layers -> joint_attention_dim 24

_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 16,  # = 4 x VAE latent_channels: the pipeline packs 2x2 latent patches into channels
    "num_layers": 2,  # double-stream blocks (Flux2AttnProcessor)
    "num_single_layers": 2,  # single-stream blocks (Flux2ParallelSelfAttnProcessor)
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 3 * _TEXT_HIDDEN,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (4, 4, 4, 4),  # sums to attention_head_dim
    "rope_theta": 2000,
    "eps": 1e-6,
}

_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    # 4 blocks: the same x8 spatial compression as the real VAE, so a 64x64 image is an 8x8 latent = 16 tokens.
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 8, 8),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 64,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": (2, 2),
}

# FLUX.2's scheduler: flow matching with resolution-dependent ("dynamic") exponential time shift; the pipelines
# compute ``mu`` themselves (compute_empirical_mu), which requires use_dynamic_shifting=True.
_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}

# Text encoders are deep enough (30 and 27 layers of width 8) for the pipelines' default
# ``text_encoder_out_layers`` ((10, 20, 30) for [dev], (9, 18, 27) for [klein]), so ``pipe(prompt=...)`` works with
# no tiny-model-specific arguments. Each layer costs microseconds at this width.
_MISTRAL_TEXT = {
    "model_type": "mistral",
    "vocab_size": tiny_vocab_size("dev"),
    "hidden_size": _TEXT_HIDDEN,
    "intermediate_size": 16,
    "num_hidden_layers": 30,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e9},
    "sliding_window": None,
    "tie_word_embeddings": False,
    "bos_token_id": _token_id("dev", "<s>"),
    "eos_token_id": _token_id("dev", "</s>"),
    "pad_token_id": _token_id("dev", "<pad>"),
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "dev": {
        "transformer": {**_TRANSFORMER, "guidance_embeds": True},  # [dev] is guidance-distilled
        "vae": _VAE,
        "scheduler": _SCHEDULER,
        "text_encoder": {  # Mistral3Config: a Mistral language model + a Pixtral vision tower (unused for text)
            "text_config": _MISTRAL_TEXT,
            "vision_config": {
                "model_type": "pixtral",
                "hidden_size": 8,
                "intermediate_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 28,
                "patch_size": 14,
                "num_channels": 3,
            },
            "image_token_index": _token_id("dev", "[IMG]"),
            "spatial_merge_size": 2,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -1,
            "multimodal_projector_bias": False,
            "tie_word_embeddings": False,
        },
        "text_encoder_out_layers": (10, 20, 30),
        "is_distilled": None,  # Flux2Pipeline has no such flag
    },
    "klein": {
        "transformer": {**_TRANSFORMER, "guidance_embeds": False},  # [klein] uses true CFG instead
        "vae": _VAE,
        "scheduler": _SCHEDULER,
        "text_encoder": {  # Qwen3Config
            "vocab_size": tiny_vocab_size("klein"),
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": 16,
            "num_hidden_layers": 27,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 4,
            "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": _token_id("klein", "<|endoftext|>"),
            "pad_token_id": _token_id("klein", "<|endoftext|>"),
        },
        "text_encoder_out_layers": (9, 18, 27),
        "is_distilled": False,  # False = the base model: guidance_scale > 1 runs two transformer passes per step
    },
}


# ---------------------------------------------------------------------------------------------------------------
# Consistency rules.
# ---------------------------------------------------------------------------------------------------------------


def _as_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        return config.to_dict()
    return dict(config)  # diffusers FrozenDict


def _text_model_config(text_config: Any) -> dict[str, Any]:
    """The language-model part of a text encoder config (Mistral3's ``text_config``, or the config itself)."""
    config = _as_dict(text_config)
    inner = config.get("text_config")
    return _as_dict(inner) if inner is not None else config


def validate_flux2_config(
    transformer_config: Any,
    vae_config: Any,
    text_config: Any,
    *,
    text_encoder_out_layers: Sequence[int] = (10, 20, 30),
) -> None:
    """Check that FLUX.2 component configs fit together; raise ``ValueError`` naming each broken rule and its fix.

    Accepts dicts, diffusers ``FrozenDict`` configs or transformers configs (a Mistral3 config's ``text_config`` is
    used). ``text_encoder_out_layers`` is the pipeline call argument of that name (which hidden states of the text
    encoder are stacked into the prompt embedding).
    """
    tf, vae, text = _as_dict(transformer_config), _as_dict(vae_config), _text_model_config(text_config)
    reasons: list[str] = []

    head_dim = tf.get("attention_head_dim", 128)
    axes = tuple(tf.get("axes_dims_rope", (32, 32, 32, 32)))
    if len(axes) != 4:
        reasons.append(
            f"axes_dims_rope {axes} must have 4 entries, one per position-id coordinate (t, h, w, l) the pipelines "
            f"build; split attention_head_dim ({head_dim}) in 4, e.g. {(head_dim // 4,) * 4}."
        )
    if sum(axes) != head_dim:
        reasons.append(
            f"sum(axes_dims_rope) = sum({axes}) = {sum(axes)} must equal attention_head_dim ({head_dim}): RoPE "
            f"rotates every channel of a head; use e.g. axes_dims_rope={(head_dim // 4,) * 4}."
        )
    if any(a % 2 for a in axes):
        reasons.append(f"every axes_dims_rope entry must be even (RoPE rotates channel pairs); got {axes}.")

    n_layers = len(tuple(text_encoder_out_layers))
    text_hidden = text.get("hidden_size")
    joint = tf.get("joint_attention_dim", 15360)
    if text_hidden is not None and joint != n_layers * text_hidden:
        reasons.append(
            f"joint_attention_dim ({joint}) must be {n_layers} x the text encoder hidden size ({text_hidden}) = "
            f"{n_layers * text_hidden}: the prompt embedding stacks {n_layers} hidden-state layers "
            f"(text_encoder_out_layers={tuple(text_encoder_out_layers)}); set joint_attention_dim="
            f"{n_layers * text_hidden}."
        )

    depth = text.get("num_hidden_layers")
    if depth is not None and any(not -(depth + 1) <= i <= depth for i in text_encoder_out_layers):
        reasons.append(
            f"text_encoder_out_layers {tuple(text_encoder_out_layers)} index hidden states of a text encoder with "
            f"num_hidden_layers={depth} (valid indices 0..{depth}); pass text_encoder_out_layers=(1, 2, 3) to the "
            f"pipeline call for a shallow encoder, or give it at least {max(text_encoder_out_layers)} layers."
        )

    latent = vae.get("latent_channels", 32)
    in_channels = tf.get("in_channels", 128)
    if in_channels != 4 * latent:
        reasons.append(
            f"in_channels ({in_channels}) must be 4 x the VAE latent_channels ({latent}) = {4 * latent}: the pipeline "
            f"packs 2x2 latent patches into channels; set in_channels={4 * latent}."
        )
    out_channels = tf.get("out_channels")
    if out_channels is not None and out_channels != in_channels:
        reasons.append(
            f"out_channels ({out_channels}) must equal in_channels ({in_channels}) or be None: the transformer "
            f"predicts the velocity of its own input."
        )
    if tf.get("patch_size", 1) != 1:
        reasons.append(
            f"patch_size ({tf['patch_size']}) must be 1: the pipelines patchify latents 2x2 themselves; "
            f"set patch_size=1."
        )
    if tuple(vae.get("patch_size", (2, 2))) != (2, 2):
        reasons.append(
            f"the VAE patch_size {tuple(vae['patch_size'])} must be (2, 2): the pipelines hard-code 2x2 packing."
        )

    groups = vae.get("norm_num_groups", 32)
    channels = tuple(vae.get("block_out_channels", (128, 256, 512, 512)))
    decoder_channels = tuple(vae.get("decoder_block_out_channels") or channels)
    bad = sorted({c for c in channels + decoder_channels if c % groups})
    if bad:
        reasons.append(
            f"VAE norm_num_groups ({groups}) must divide every block_out_channels entry; {bad} are not multiples "
            f"(GroupNorm). Pick channels that are multiples of {groups}, or fewer groups."
        )
    if len(vae.get("down_block_types", ())) not in (0, len(channels)):
        reasons.append(
            f"the VAE has {len(vae['down_block_types'])} down_block_types but {len(channels)} block_out_channels; "
            f"give one channel count per block."
        )

    if reasons:
        raise ValueError("FLUX.2 config is inconsistent:\n- " + "\n- ".join(reasons))


# ---------------------------------------------------------------------------------------------------------------
# Construction.
# ---------------------------------------------------------------------------------------------------------------


def _pipeline_class(variant: str):
    import diffusers

    return diffusers.Flux2Pipeline if variant == "dev" else diffusers.Flux2KleinPipeline


def _default_out_layers(pipeline_class) -> tuple[int, ...]:
    """The ``text_encoder_out_layers`` a pipeline call uses when the caller passes none."""
    return tuple(inspect.signature(pipeline_class.__call__).parameters["text_encoder_out_layers"].default)


def _build_text_encoder(variant: str, config: dict[str, Any]):
    if variant == "dev":
        from transformers import Mistral3Config, Mistral3ForConditionalGeneration

        return Mistral3ForConditionalGeneration(Mistral3Config(**copy.deepcopy(config)))
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**copy.deepcopy(config)))


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast weights to ``dtype`` and switch to eval mode.

    Uses ``torch.nn.Module.to`` directly: diffusers' ``ModelMixin.to(dtype)`` warns about float32-only modules even
    when a model has none (diffusers 0.42.1), which would print on every tiny build.
    """
    return torch.nn.Module.to(model, dtype=dtype).eval()


def build_tiny_pipeline(variant: str = "dev", *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised FLUX.2 pipeline from the real diffusers classes, built offline in well under a second.

    ``"dev"`` gives a ``diffusers.Flux2Pipeline`` (Mistral3 text encoder, embedded guidance), ``"klein"`` a
    ``diffusers.Flux2KleinPipeline`` (Qwen3 text encoder, true classifier-free guidance). The same ``seed`` gives
    bit-identical weights; the global torch RNG is left as it was. Call Klein with ``prompt=`` (its first
    positional argument is ``image``).
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    configs = TINY_CONFIGS[_check_variant(variant)]
    pipeline_class = _pipeline_class(variant)
    out_layers = _default_out_layers(pipeline_class)
    validate_flux2_config(
        configs["transformer"], configs["vae"], _text_model_config(configs["text_encoder"]),
        text_encoder_out_layers=out_layers,
    )

    # Each component gets its own seed offset, so resizing one component leaves the others' weights unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(**copy.deepcopy(configs["transformer"]))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLFlux2(**copy.deepcopy(configs["vae"]))
        # Non-trivial latent statistics, so a loader that drops the BatchNorm buffers changes the output.
        vae.bn.running_mean.copy_(0.1 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(1.0 + 0.1 * torch.rand_like(vae.bn.running_var))
        torch.manual_seed(seed + 2)
        text_encoder = _build_text_encoder(variant, configs["text_encoder"])

    components = {
        "scheduler": FlowMatchEulerDiscreteScheduler(**copy.deepcopy(configs["scheduler"])),
        "vae": _cast(vae, dtype),
        "text_encoder": _cast(text_encoder, dtype),
        "tokenizer": build_tiny_tokenizer(variant),
        "transformer": _cast(transformer, dtype),
    }
    if configs["is_distilled"] is not None:
        components["is_distilled"] = configs["is_distilled"]
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def realign_weights(pipe) -> None:
    """Copy every weight and buffer of ``pipe``'s models into freshly allocated tensors, in place.

    ``from_pretrained`` on CPU leaves weights as views of the memory-mapped safetensors file, at addresses that are
    not 64-byte aligned, and CPU matmul kernels round the last bit differently for such operands (measured: a
    ``[1, 256] x [256, 32]`` linear in the timestep embedder). After this copy a loaded tiny pipeline reproduces the
    pipeline it was saved from bit for bit. Not needed on GPU: moving a model there copies it anyway.
    """
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        with torch.no_grad():
            for tensor in [*component.parameters(), *component.buffers()]:
                tensor.data = tensor.data.clone()
