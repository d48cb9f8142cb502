"""The one hook into diffusers: FLUX.2's module-level ``dispatch_attention_fn``, swapped for a router, and the
``fluxlab::flux2_attention`` custom op a compiled graph calls instead. How and why: docs/flux2_internals.md.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations to build the op schema.

import inspect
import math
import weakref

import torch
from torch import Tensor

from ..errors import AttachError, UnsupportedAttentionCallError
from ..ops import _out_like, _owned

# The parameters of diffusers 0.42's dispatch_attention_fn, which the router must accept exactly.
_EXPECTED_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
                        "attention_kwargs", "backend", "parallel_config")

# original: diffusers' function; stuck: our router could not be removed (another patch wraps it) and stays
# in the chain as a pass-through.
_state = {"original": None, "users": 0, "stuck": False}
_is_compiling = torch.compiler.is_compiling  # bound once: checked on every call
_models: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()  # serial -> AttachedModel
_next_serial = [0]
# A route token's data_ptr -> (serial, layer index, the token): the op finds its layer without a device sync.
_tokens: "dict[int, tuple[int, int, weakref.ref]]" = {}
# The op decides the kernel when it runs, so a CUDA graph must not freeze it: inductor keeps the op out of graphs
# it captures. Torch without the tag: no capture.
_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag is not None)


def register_model(state) -> int:
    """Make an attached model reachable from compiled graphs; returns its serial (part of each layer's route)."""
    _next_serial[0] += 1
    _models[_next_serial[0]] = state
    return _next_serial[0]


def unregister_model(serial: int) -> None:
    _models.pop(serial, None)


def route_token(serial: int, layer_index: int, device) -> Tensor:
    """A layer's token [serial, layer index] on ``device`` (on the model's device: inductor treats an op with a CPU
    input as returning an unaligned buffer), registered so the op finds the layer without reading device memory."""
    for pointer in [p for p, (_, _, ref) in _tokens.items() if ref() is None]:
        del _tokens[pointer]
    token = torch.tensor([serial, layer_index], dtype=torch.int64, device=device)
    _tokens[token.data_ptr()] = (serial, layer_index, weakref.ref(token))
    return token


def _route_of(route: Tensor) -> tuple[int, int]:
    entry = _tokens.get(route.data_ptr())
    if entry is not None and entry[2]() is not None:
        return entry[0], entry[1]
    serial, layer_index = route.tolist()  # a token made elsewhere (e.g. inside a compiled graph): read it
    return serial, layer_index


class Route:
    """What an attached model's processor carries as ``_attention_backend``: its model and layer, and the layer's
    ``token`` (``route_token``) that compiled graphs pass to the op."""

    __slots__ = ("model", "layer", "serial", "index", "token", "__weakref__")

    def __init__(self, model, layer: str, serial: int, layer_index: int, device="cpu"):
        self.model, self.layer, self.serial, self.index = model, layer, serial, layer_index
        self.place(device)

    def place(self, device) -> None:
        """Put the token on ``device`` (the model's inputs' device; the attach hook follows moves and offload)."""
        self.token = route_token(self.serial, self.index, device)

    def __repr__(self):
        return f"fluxlab.Route({self.layer!r})"


@torch.library.custom_op("fluxlab::flux2_attention", mutates_args=(), tags=_TAGS)
def flux2_attention_op(q: Tensor, k: Tensor, v: Tensor, route: Tensor, scale: float, causal: bool) -> Tensor:
    """One attention call of an attached FLUX.2 model. ``route`` is the layer's token: a tensor, so one compiled
    block serves every layer (an int constant would recompile per layer)."""
    serial, layer_index = _route_of(route)
    state = _models.get(serial)
    if state is None:
        raise AttachError("a compiled graph called fluxlab for a FLUX.2 model that is no longer attached; "
                          "re-run the model (detaching restores diffusers' attention and recompiles)")
    out = state.run_attention(state.layer_names[layer_index], q, k, v, scale=scale, causal=causal)
    return _owned(out, q, k, v)


@flux2_attention_op.register_fake
def _(q, k, v, route, scale, causal):
    return _out_like(q, v)


def _module():
    from diffusers.models.transformers import transformer_flux2

    return transformer_flux2


def router(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
           attention_kwargs=None, *, backend=None, parallel_config=None):
    """Stands in for diffusers' ``dispatch_attention_fn``; same signature, same [B, S, H, D] in and out."""
    if type(backend) is not Route:  # not an attached model: diffusers' own behaviour, untouched
        return _state["original"](query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                  attention_kwargs, backend=backend, parallel_config=parallel_config)
    refuse_unsupported(backend, attn_mask=attn_mask, dropout_p=dropout_p, attention_kwargs=attention_kwargs,
                       parallel_config=parallel_config)
    if scale is None:
        # The number torch's SDPA computes for scale=None, passed explicitly: keeps `sdpa` bit-identical to
        # diffusers' `native` (head_dim ** -0.5 can differ from 1/sqrt(head_dim) in the last bit).
        scale = 1.0 / math.sqrt(query.shape[-1])
    # enable_gqa needs nothing: fluxlab serves grouped-query attention whenever the head counts divide.
    if _is_compiling():
        return torch.ops.fluxlab.flux2_attention(query, key, value, backend.token, scale, bool(is_causal))
    return backend.model.run_attention(backend.layer, query, key, value, scale=scale, causal=bool(is_causal))


def refuse_unsupported(route, *, attn_mask, dropout_p, attention_kwargs, parallel_config) -> None:
    """Raise for calls a fluxlab kernel would get wrong; stock FLUX.2 pipelines never make them.

    ``route.layer`` is read only inside the raising branches: dynamo guards on a string it reads, which would
    recompile each block once per layer; one compiled block must serve every layer.
    """
    detach_hint = "or call fluxlab.detach(pipe) to let diffusers' own attention handle it"
    if attn_mask is not None:
        raise UnsupportedAttentionCallError(
            f"{route.layer}: diffusers passed an attention mask (shape {tuple(attn_mask.shape)}), which only arrives "
            "through pipe(..., attention_kwargs={'attention_mask': ...}); fluxlab's backends take no mask and "
            f"would attend to the masked tokens. Drop the mask ({detach_hint}).")
    if dropout_p:
        raise UnsupportedAttentionCallError(
            f"{route.layer}: attention dropout_p={dropout_p} requested; fluxlab's backends run inference attention "
            f"without dropout. Put the model in eval mode ({detach_hint}).")
    if attention_kwargs:
        raise UnsupportedAttentionCallError(
            f"{route.layer}: diffusers-specific attention_kwargs {sorted(attention_kwargs)} have no fluxlab "
            f"equivalent; remove them ({detach_hint}).")
    if parallel_config is not None:
        raise UnsupportedAttentionCallError(
            f"{route.layer}: the transformer runs context parallel (enable_parallelism), so each call sees a shard of "
            "the sequence and needs diffusers' Ulysses/ring exchange; a single-device fluxlab kernel would "
            "attend within the shard only. Detach fluxlab for context-parallel runs.")


def acquire() -> None:
    """Install the router (first user) and count users."""
    module = _module()
    current = module.dispatch_attention_fn
    still_chained = _state["stuck"] and current is not _state["original"]
    # With users already counted the router is in place (or wrapped by another patch): never stack a second one.
    if _state["users"] == 0 and current is not router and not still_chained:
        names = tuple(inspect.signature(current).parameters)
        if names != _EXPECTED_PARAMETERS:
            import diffusers

            raise AttachError(
                f"diffusers {diffusers.__version__}'s FLUX.2 dispatch_attention_fn takes {names}, not the "
                f"{_EXPECTED_PARAMETERS} fluxlab's router was written for (diffusers 0.42.x); install "
                "diffusers>=0.42.1,<0.43 or update fluxlab/models/router.py.")
        _state.update(original=current, stuck=False)
        module.dispatch_attention_fn = router
    _state["users"] += 1


def release() -> None:
    """Count one user out; the last one puts diffusers' function back (unless someone patched over ours)."""
    if _state["users"] == 0:
        return
    _state["users"] -= 1
    if _state["users"] == 0:
        if _module().dispatch_attention_fn is router:
            _module().dispatch_attention_fn = _state["original"]
        else:  # another library wrapped our router; restoring now would drop its patch. Ours then stays in
            _state["stuck"] = True  # the chain as a pass-through (no model attached: every call goes through)
