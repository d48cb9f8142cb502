"""fluxlab backends inside diffusers' context parallelism: each becomes a member ``"fluxlab:<backend>"`` of
diffusers' closed ``AttentionBackendName`` enum, run per rank by its Ulysses/ring templates (LSE as ``[B, S, H]``).
Private diffusers API: ``engine_problems()`` checks every piece, and the package pins ``diffusers>=0.42.1,<0.43``."""

from __future__ import annotations

import inspect

import torch

from ..dispatch import BackendChoice, attention
from ..errors import MaskNotSupportedError

PREFIX = "fluxlab:"

# Every private name of diffusers this module touches, with what it must look like (checked by engine_problems).
_TEMPLATE_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
                  "return_lse", "forward_op", "backward_op", "_parallel_config")
_REQUIRED = {"_AttentionBackendRegistry": ("_backends", "_constraints", "_supported_arg_names",
                                           "_supports_context_parallel"),
             "AttentionBackendName": ("_member_map_", "_value2member_map_", "_member_names_"),  # enum internals
             "_templated_context_parallel_attention": ()}

# The arguments diffusers' dispatcher may pass to a registered backend (it drops the others by name).
_ENTRY_ARGS = frozenset(_TEMPLATE_ARGS) - {"forward_op", "backward_op"}


def engine_problems() -> list[str]:
    """What is missing from the installed diffusers for this bridge (empty: it works). Each item names the API."""
    try:
        from diffusers.models import attention_dispatch as ad
    except ImportError as exc:
        return [f"diffusers is not importable ({exc}): pip install 'diffusers>=0.42.1,<0.43'"]
    problems = []
    for name, attributes in _REQUIRED.items():
        owner = getattr(ad, name, None)
        if owner is None:
            problems.append(f"diffusers.models.attention_dispatch.{name} is gone")
        else:
            problems += [f"{name}.{attribute} is gone" for attribute in attributes if not hasattr(owner, attribute)]
    template = getattr(ad, "_templated_context_parallel_attention", None)
    if template is not None and tuple(inspect.signature(template).parameters) != _TEMPLATE_ARGS:
        problems.append(f"_templated_context_parallel_attention takes {tuple(inspect.signature(template).parameters)}"
                        f", expected {_TEMPLATE_ARGS}")
    if problems:
        import diffusers

        problems.append(f"(diffusers {diffusers.__version__}; fluxlab.parallel is written against 0.42.x)")
    return problems


# ------------------------------------------------------------------------------------------ the per-rank op


def _refuse_unsupported(attn_mask, dropout_p, is_causal, enable_gqa) -> None:
    for refused, message in (
            (attn_mask is not None, "fluxlab backends take no attention mask; FLUX.2 pipelines pass none. Drop "
                                    "attention_kwargs={'attention_mask': ...} or use a diffusers backend that masks."),
            (dropout_p, f"fluxlab backends run inference only; dropout_p={dropout_p} must be 0"),
            (is_causal, "diffusers' context-parallel templates do not support causal attention"),
            (enable_gqa, "diffusers' context-parallel templates do not support grouped-query attention")):
        if refused:
            raise MaskNotSupportedError(message)


def wait_collective(t: torch.Tensor) -> torch.Tensor:
    """diffusers' ring hands K/V over as views of a functional all-gather (an ``AsyncCollectiveTensor``) that waits
    only when an ATen op touches it. Kernels that read raw pointers (Triton, CuTe DSL, other libraries) would not
    trigger that wait: settle it here, explicitly."""
    if type(t) is torch.Tensor:
        return t
    wait = getattr(t, "wait", None)
    return wait() if callable(wait) else t


def make_forward_op(choice: BackendChoice):
    """The op diffusers' Ulysses/ring templates call on each rank's shard: ``fluxlab.attention`` with ``choice``."""
    backend = str(choice)

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        _refuse_unsupported(attn_mask, dropout_p, is_causal, enable_gqa)
        query, key, value = wait_collective(query), wait_collective(key), wait_collective(value)
        if not return_lse:
            return attention(query, key, value, backend=backend, scale=scale)
        out, lse = attention(query, key, value, backend=backend, scale=scale, return_lse=True)
        return out, lse.transpose(1, 2).contiguous()  # fluxlab's [B, H, S] as diffusers' [B, S, H]

    forward_op.__name__ = f"fluxlab_{choice.name}_forward_op"
    return forward_op


def _backward_op(ctx, grad_out, *args, **kwargs):
    raise NotImplementedError("fluxlab's context-parallel attention is forward-only (inference); run the model "
                              "under torch.no_grad() or torch.inference_mode().")


def make_entry(choice: BackendChoice):
    """The function registered in diffusers' attention registry for ``choice``: plain attention without a parallel
    config, diffusers' Ulysses/ring template with fluxlab's op inside when one is set."""
    from diffusers.models import attention_dispatch as ad

    forward_op = make_forward_op(choice)

    def entry(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
              return_lse=False, _parallel_config=None):
        if _parallel_config is None:
            return forward_op(None, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                              return_lse)
        _refuse_unsupported(attn_mask, dropout_p, is_causal, enable_gqa)
        return ad._templated_context_parallel_attention(
            query, key, value, None, 0.0, False, scale, False, return_lse,
            forward_op=forward_op, backward_op=_backward_op, _parallel_config=_parallel_config)

    entry.__name__ = f"fluxlab_{choice.name}_attention"
    return entry


# ------------------------------------------------------------------------------------------ registration


def diffusers_name(backend: str | BackendChoice) -> str:
    """The diffusers backend name (enum value) that runs fluxlab backend ``backend``: ``"fluxlab:sdpa"``."""
    return PREFIX + str(BackendChoice.parse(backend))


def _add_enum_member(enum_cls, value: str):
    """Add ``value`` to a closed ``str`` Enum (Python 3.11-3.13 internals; checked by engine_problems)."""
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        return existing
    name = "FLUXLAB_" + "".join(ch if ch.isalnum() else "_" for ch in value[len(PREFIX):]).upper()
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def register_in_diffusers(backend: str | BackendChoice):
    """Make fluxlab backend ``backend`` a context-parallel-capable diffusers attention backend; returns its
    ``AttentionBackendName`` member (idempotent)."""
    problems = engine_problems()
    if problems:
        raise RuntimeError("fluxlab cannot plug its backends into diffusers' context parallelism:\n  - "
                           + "\n  - ".join(problems))
    from diffusers.models import attention_dispatch as ad

    choice = BackendChoice.parse(backend)
    member = _add_enum_member(ad.AttentionBackendName, diffusers_name(choice))
    registry = ad._AttentionBackendRegistry
    if member not in registry._backends:
        registry._backends[member] = make_entry(choice)
        registry._constraints[member] = []
        registry._supported_arg_names[member] = set(_ENTRY_ARGS)
        registry._supports_context_parallel.add(member.value)
    return member


def attention_processors(model) -> list:
    """Every attention processor of a diffusers model that takes a backend (``_attention_backend``)."""
    from diffusers.models.attention import AttentionModuleMixin

    return [module.processor for module in model.modules() if isinstance(module, AttentionModuleMixin)
            and hasattr(getattr(module, "processor", None), "_attention_backend")]


def set_model_backend(model, backend: str | BackendChoice | None) -> None:
    """Run every attention processor of ``model`` on fluxlab backend ``backend`` (None: diffusers' default again),
    like ``AttentionModuleMixin.set_attention_backend`` per processor: diffusers' process-global backend stays."""
    member = register_in_diffusers(backend) if backend is not None else None
    processors = attention_processors(model)
    if not processors:
        raise ValueError(f"{type(model).__name__} has no diffusers attention processors to route")
    for processor in processors:
        processor._attention_backend = member
