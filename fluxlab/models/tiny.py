"""Tiny, randomly initialised FLUX.2 pipelines, built offline from the real diffusers and transformers classes.

``build_tiny_pipeline("dev")`` is a real ``diffusers.Flux2Pipeline``, ``build_tiny_pipeline("klein")`` a real
``diffusers.Flux2KleinPipeline``: the released checkpoints' code paths at toy sizes, with nothing downloaded. Also
``random_transformer``: any FLUX.2 transformer config with seeded random weights, built where it will run.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .checkpoint import default_out_layers, validate_flux2_config

VARIANTS = ("dev", "klein")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown FLUX.2 variant {variant!r}; choose one of {VARIANTS}.")
    return variant


# -- tokenizers: a byte-level vocabulary (every byte one token, no merges) plus the special tokens each chat template
# writes. Text-only: FLUX.2 [dev] ships a PixtralProcessor (needs torchvision); for text prompts the pipeline only
# calls ``apply_chat_template`` on it, which a plain fast tokenizer answers the same way.

# Mistral Small 3.1 style: [SYSTEM_PROMPT] ... [/SYSTEM_PROMPT][INST] ... [/INST]; content may be a string or the
# list-of-parts form that Flux2Pipeline's ``format_input`` builds ({"type": "text", "text": ...}).
_MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- for part in message['content'] if part['type'] != 'text' %}"
    "{{- raise_exception('the tiny FLUX.2 tokenizer is text-only; got a ' ~ part['type'] ~ ' part') }}"
    "{%- endfor %}{%- set text = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' ~ text ~ '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' ~ text ~ '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- text ~ eos_token }}"
    "{%- else %}{{- raise_exception('unknown chat role: ' ~ message['role']) }}{%- endif %}{%- endfor %}"
)

# Qwen3 style ChatML; ``enable_thinking=False`` (what Flux2KleinPipeline passes) writes an empty think block.
_QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ text ~ '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# Special tokens take the first ids, then the 256 byte characters.
TOKENIZER_SPECS: dict[str, dict[str, Any]] = {
    "dev": {"special_tokens": ("<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]",
                               "[/SYSTEM_PROMPT]", "[IMG]"),
            "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
            "chat_template": _MISTRAL_CHAT_TEMPLATE},
    "klein": {"special_tokens": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
              "roles": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
              "chat_template": _QWEN_CHAT_TEMPLATE},
}


def _token_id(variant: str, token: str) -> int:
    return TOKENIZER_SPECS[variant]["special_tokens"].index(token)


def tiny_vocab_size(variant: str) -> int:
    """Number of token ids the tiny tokenizer of ``variant`` produces (special tokens + 256 bytes)."""
    return len(TOKENIZER_SPECS[_check_variant(variant)]["special_tokens"]) + 256


def build_tiny_tokenizer(variant: str = "dev"):
    """A byte-level tokenizer with the chat template ``variant``'s pipeline expects, built without downloads."""
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # the GPT-2 / ByteLevel byte characters

    spec = TOKENIZER_SPECS[_check_variant(variant)]
    vocab = {token: i for i, token in enumerate(spec["special_tokens"])}
    characters = bytes_to_unicode()
    vocab.update({characters[byte]: len(vocab) + byte for byte in range(256)})
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


# -- component configs, as data ---------------------------------------------------------------------------------

_TEXT_HIDDEN = 8  # text encoder hidden size; FLUX.2 stacks 3 of its hidden-state layers -> joint_attention_dim 24

# 2 double-stream blocks (Flux2AttnProcessor) and 2 single-stream ones (Flux2ParallelSelfAttnProcessor).
# in_channels = 4 x VAE latent_channels (the pipeline packs 2x2 latent patches); axes_dims_rope sums to head_dim.
_TRANSFORMER = {"patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16,
                "num_attention_heads": 2, "joint_attention_dim": 3 * _TEXT_HIDDEN, "timestep_guidance_channels": 256,
                "mlp_ratio": 3.0, "axes_dims_rope": (4, 4, 4, 4), "rope_theta": 2000, "eps": 1e-6}

# 4 blocks: the same x8 spatial compression as the real VAE, so a 64x64 image is an 8x8 latent = 16 tokens.
_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (8, 8, 8, 8), "layers_per_block": 1,
        "latent_channels": 4, "norm_num_groups": 4, "sample_size": 64, "use_quant_conv": True,
        "use_post_quant_conv": True, "mid_block_add_attention": True, "batch_norm_eps": 1e-4,
        "batch_norm_momentum": 0.1, "patch_size": (2, 2)}

# FLUX.2's scheduler: flow matching with resolution-dependent ("dynamic") exponential time shift; the pipelines
# compute ``mu`` themselves (compute_empirical_mu), which requires use_dynamic_shifting=True.
_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
              "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
              "time_shift_type": "exponential"}

# Text encoders are deep enough (30 and 27 layers of width 8) for the pipelines' default ``text_encoder_out_layers``
# ((10, 20, 30) for [dev], (9, 18, 27) for [klein]), so ``pipe(prompt=...)`` needs no tiny-model-specific arguments.
_TEXT = {"hidden_size": _TEXT_HIDDEN, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 4, "max_position_embeddings": 512, "tie_word_embeddings": False}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "dev": {
        "transformer": {**_TRANSFORMER, "guidance_embeds": True},  # [dev] is guidance-distilled
        "vae": _VAE,
        "scheduler": _SCHEDULER,
        "text_encoder": {  # Mistral3Config: a Mistral language model + a Pixtral vision tower (unused for text)
            "text_config": {"model_type": "mistral", "vocab_size": tiny_vocab_size("dev"), **_TEXT,
                            "num_hidden_layers": 30, "rms_norm_eps": 1e-5,
                            "rope_parameters": {"rope_type": "default", "rope_theta": 1e9}, "sliding_window": None,
                            "bos_token_id": _token_id("dev", "<s>"), "eos_token_id": _token_id("dev", "</s>"),
                            "pad_token_id": _token_id("dev", "<pad>")},
            "vision_config": {"model_type": "pixtral", "hidden_size": 8, "intermediate_size": 16,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                              "num_channels": 3},
            "image_token_index": _token_id("dev", "[IMG]"), "spatial_merge_size": 2, "projector_hidden_act": "gelu",
            "vision_feature_layer": -1, "multimodal_projector_bias": False, "tie_word_embeddings": False,
        },
        "text_encoder_out_layers": (10, 20, 30),
        "is_distilled": None,  # Flux2Pipeline has no such flag
    },
    "klein": {
        "transformer": {**_TRANSFORMER, "guidance_embeds": False},  # [klein] uses true CFG instead
        "vae": _VAE,
        "scheduler": _SCHEDULER,
        "text_encoder": {"vocab_size": tiny_vocab_size("klein"), **_TEXT, "num_hidden_layers": 27,  # Qwen3Config
                         "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                         "bos_token_id": None, "eos_token_id": _token_id("klein", "<|endoftext|>"),
                         "pad_token_id": _token_id("klein", "<|endoftext|>")},
        "text_encoder_out_layers": (9, 18, 27),
        "is_distilled": False,  # False = the base model: guidance_scale > 1 runs two transformer passes per step
    },
}


def build_tiny_pipeline(variant: str = "dev", *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised FLUX.2 pipeline from the real diffusers classes, built offline in well under a second.

    ``"dev"`` gives a ``diffusers.Flux2Pipeline`` (Mistral3 text encoder, embedded guidance), ``"klein"`` a
    ``diffusers.Flux2KleinPipeline`` (Qwen3 text encoder, true classifier-free guidance). The same ``seed`` gives
    bit-identical weights; the global torch RNG is left as it was. Call Klein with ``prompt=`` (its first
    positional argument is ``image``).
    """
    import diffusers
    import transformers

    configs = copy.deepcopy(TINY_CONFIGS[_check_variant(variant)])
    pipeline_class = diffusers.Flux2Pipeline if variant == "dev" else diffusers.Flux2KleinPipeline
    validate_flux2_config(configs["transformer"], configs["vae"], configs["text_encoder"],
                          text_encoder_out_layers=default_out_layers(pipeline_class))
    text_model, text_config = ((transformers.Mistral3ForConditionalGeneration, transformers.Mistral3Config)
                               if variant == "dev" else (transformers.Qwen3ForCausalLM, transformers.Qwen3Config))
    # Each component gets its own seed offset, so resizing one component leaves the others' weights unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = diffusers.Flux2Transformer2DModel(**configs["transformer"])
        torch.manual_seed(seed + 1)
        vae = diffusers.AutoencoderKLFlux2(**configs["vae"])
        # Non-trivial latent statistics, so a loader that drops the BatchNorm buffers changes the output.
        vae.bn.running_mean.copy_(0.1 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(1.0 + 0.1 * torch.rand_like(vae.bn.running_var))
        torch.manual_seed(seed + 2)
        text_encoder = text_model(text_config(**configs["text_encoder"]))
    # torch.nn.Module.to, not diffusers' ModelMixin.to(dtype), which warns about float32-only modules even when a
    # model has none.
    models = {name: torch.nn.Module.to(model, dtype=dtype).eval()
              for name, model in (("vae", vae), ("text_encoder", text_encoder), ("transformer", transformer))}
    components = {"scheduler": diffusers.FlowMatchEulerDiscreteScheduler(**configs["scheduler"]), **models,
                  "tokenizer": build_tiny_tokenizer(variant)}
    if configs["is_distilled"] is not None:
        components["is_distilled"] = configs["is_distilled"]
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_transformer(config: dict, *, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """``Flux2Transformer2DModel(**config)`` on ``device`` in ``dtype``; same seed, device type and dtype give
    bit-identical weights (so every rank of a parallel job builds the same copy). Eval mode, no grad.

    Built on the meta device with the target dtype as default and initialised on ``device``: the [dev] transformer
    in fp32 on the host first does not fit an 80 GB card."""
    from diffusers import Flux2Transformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Flux2Transformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
                module.reset_parameters()
    uninitialised = [name for name, module in model.named_modules()
                     if any(True for _ in module.parameters(recurse=False)) and not hasattr(module, "reset_parameters")]
    if uninitialised or any(True for _ in model.buffers()):
        raise RuntimeError(f"cannot initialise {uninitialised or 'buffers'} after to_empty: this diffusers version "
                           "added parameters without reset_parameters(); extend fluxlab.models.tiny.random_transformer")
    return model.eval().requires_grad_(False)
