"""The one hook into diffusers: FLUX.2's module-level ``dispatch_attention_fn``, swapped for a router.

diffusers' FLUX.2 processors (double, single and both Klein KV ones) look ``dispatch_attention_fn`` up in
``diffusers.models.transformers.transformer_flux2``'s namespace at call time and pass it their own
``_attention_backend``, so replacing that one name reaches every FLUX.2 attention call without copying any
processor code (processor subclasses would have to re-implement each ``__call__``; diffusers' backend registry is
a closed enum). The swap is process-wide, but routing is per model: attaching puts a :class:`Route` (model, layer)
in each of the model's processors as its ``_attention_backend``; a call carrying a Route goes to fluxlab, every
other call to diffusers' original function unchanged. The router is installed with the first attached model and
removed with the last.

Under ``torch.compile`` the router is traced like the rest of the block: the Route's type is a guard, and the call
becomes one ``fluxlab::flux2_attention`` op (``fluxlab/models/op.py``) whose route token is a graph input, so one compiled
block serves every layer and the backend is chosen when the op runs (no recompile on a switch).
"""

from __future__ import annotations

import inspect
import math

import torch

from . import op as ops  # registers the fluxlab::flux2_attention op the compiled path calls
from .errors import AttachError, UnsupportedAttentionCallError

# The parameters of diffusers 0.42's dispatch_attention_fn, which the router must accept exactly.
_EXPECTED_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa",
                        "attention_kwargs", "backend", "parallel_config")

# original: diffusers' function; stuck: our router could not be removed (another patch wraps it) and stays
# in the chain as a pass-through.
_state = {"original": None, "users": 0, "stuck": False}
_is_compiling = torch.compiler.is_compiling  # bound once: checked on every call


class Route:
    """What an attached model's processor carries as ``_attention_backend``: its model and layer.

    ``token`` (``ops.route_token``, on the device the model runs on) is what compiled graphs pass to the op;
    eager calls use ``model`` and ``layer`` directly.
    """

    __slots__ = ("model", "layer", "serial", "index", "token", "__weakref__")

    def __init__(self, model, layer: str, serial: int, layer_index: int, device="cpu"):
        self.model = model
        self.layer = layer
        self.serial, self.index = serial, layer_index
        self.place(device)

    def place(self, device) -> None:
        """Put the token on ``device`` (the model's inputs' device; the attach hook follows moves and offload)."""
        self.token = ops.route_token(self.serial, self.index, device)

    def __repr__(self):
        return f"fluxlab.Route({self.layer!r})"


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

    ``route.layer`` is read only inside the raising branches: under torch.compile, dynamo (torch 2.11) guards on a
    string it reads, so reading it on every call recompiled each block once per layer (an H200 run hit dynamo's
    recompile limit at the 8th double-stream block); one compiled block must serve every layer.
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
            f"{route.layer}: diffusers-specific attention_kwargs {sorted(attention_kwargs)} have no fluxlab equivalent; "
            f"remove them ({detach_hint}).")
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
        module = _module()
        if module.dispatch_attention_fn is router:
            module.dispatch_attention_fn = _state["original"]
        else:  # another library wrapped our router; restoring now would drop its patch. Ours then stays in
            _state["stuck"] = True  # the chain as a pass-through (no model attached: every call goes through)


def installed() -> bool:
    return _module().dispatch_attention_fn is router
