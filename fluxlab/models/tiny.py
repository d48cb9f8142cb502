"""Tiny, randomly initialised FLUX.2 pipelines, built offline from the real diffusers and transformers classes.

``build_tiny_pipeline("dev")`` is a real ``diffusers.Flux2Pipeline``, ``build_tiny_pipeline("klein")`` a real
``diffusers.Flux2KleinPipeline``: the same code paths as the released checkpoints (prompt encoding, RoPE ids,
attention processors, scheduler, VAE decode, ``save_pretrained``/``from_pretrained``) at toy sizes, with nothing
downloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from .checkpoint import default_out_layers, validate_flux2_config

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


def _pipeline_class(variant: str):
    import diffusers

    return diffusers.Flux2Pipeline if variant == "dev" else diffusers.Flux2KleinPipeline


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
    validate_flux2_config(configs["transformer"], configs["vae"], configs["text_encoder"],
                          text_encoder_out_layers=default_out_layers(pipeline_class))

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
