"""fluxlab's attention as ``torch.library`` custom ops: one opaque node per call for ``torch.compile``.

Dynamo never traces fluxlab's dispatcher (dictionaries keyed by shapes, environment reads, Python-side kernel
choice): it sees ``fluxlab::attention`` (``fluxlab.attention`` under compile) or ``fluxlab::flux2_attention`` (an
attached FLUX.2 model's call), with fake implementations that give the output's (and LSE's) shape. The backend is
chosen inside the op when it runs, so ``set_backend`` / ``use_backend`` / schedules change what runs without a
recompile. Outputs are contiguous ``[B, S, H, D]`` (what the fake promises); nothing returned aliases an input.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations to build the op schemas.

import weakref
from typing import Optional

import torch
from torch import Tensor

# serial -> the attached FLUX.2 model's state (models/attach.py), for fluxlab::flux2_attention.
_models: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_next_serial = [0]


def register_model(state) -> int:
    """Make an attached model reachable from compiled graphs; returns its serial (part of each layer's route)."""
    _next_serial[0] += 1
    _models[_next_serial[0]] = state
    return _next_serial[0]


def unregister_model(serial: int) -> None:
    _models.pop(serial, None)


def _owned(result: Tensor, *inputs: Tensor) -> Tensor:
    """Contiguous and not sharing storage with an input (a custom op's output may not alias its inputs)."""
    result = result.contiguous()
    pointer = result.untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() == pointer for t in inputs):
        result = result.clone()
    return result


def _out_like(q: Tensor, v: Tensor) -> Tensor:
    return q.new_empty((*q.shape[:3], v.shape[3]))


def _lse_like(q: Tensor) -> Tensor:
    return q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


# -- fluxlab.attention -------------------------------------------------------------------------------------------


def _eager(q, k, v, backend, scale, causal, return_lse, allowed, fallback, heads, check_finite):
    from .dispatch import attention

    allowed = None if allowed is None else frozenset(filter(None, allowed.split(",")))
    return attention(q, k, v, backend=backend, scale=scale, causal=causal, return_lse=return_lse, allowed=allowed,
                     fallback=fallback, heads=heads, check_finite=check_finite)


@torch.library.custom_op("fluxlab::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, backend: Optional[str], scale: Optional[float], causal: bool,
                 allowed: Optional[str], fallback: Optional[bool], heads: Optional[int],
                 check_finite: Optional[bool]) -> Tensor:
    """``fluxlab.attention(q, k, v, ...)`` as one op; ``allowed`` is the set's names joined by commas."""
    out = _eager(q, k, v, backend, scale, causal, False, allowed, fallback, heads, check_finite)
    return _owned(out, q, k, v)


@attention_op.register_fake
def _(q, k, v, backend, scale, causal, allowed, fallback, heads, check_finite):
    return _out_like(q, v)


@torch.library.custom_op("fluxlab::attention_lse", mutates_args=())
def attention_lse_op(q: Tensor, k: Tensor, v: Tensor, backend: Optional[str], scale: Optional[float], causal: bool,
                     allowed: Optional[str], fallback: Optional[bool], heads: Optional[int],
                     check_finite: Optional[bool]) -> tuple[Tensor, Tensor]:
    """``fluxlab.attention(..., return_lse=True)`` as one op: ``(out, lse)``, lse float32 ``[B, H, S]``."""
    out, lse = _eager(q, k, v, backend, scale, causal, True, allowed, fallback, heads, check_finite)
    return _owned(out, q, k, v), _owned(lse, q, k, v)


@attention_lse_op.register_fake
def _(q, k, v, backend, scale, causal, allowed, fallback, heads, check_finite):
    return _out_like(q, v), _lse_like(q)


def compiled_attention(q, k, v, *, backend=None, scale=None, causal=False, return_lse=False, allowed=None,
                       fallback=None, heads=None, check_finite=None, platform=None):
    """What ``fluxlab.attention`` calls while dynamo traces it: the custom op, with the same arguments."""
    if platform is not None:
        from .errors import InvalidInputError

        raise InvalidInputError("fluxlab.attention(platform=...) is not available under torch.compile (a Platform "
                                "cannot be an op argument); leave it out (the inputs' device decides) or call "
                                "fluxlab.attention outside the compiled function.")
    spec = None if backend is None else str(backend)  # a BackendChoice prints as "name:option=value"
    scale = None if scale is None else float(scale)
    names = None if allowed is None else ",".join(sorted(allowed))
    op = torch.ops.fluxlab.attention_lse if return_lse else torch.ops.fluxlab.attention
    return op(q, k, v, spec, scale, bool(causal), names, fallback, heads, check_finite)


# -- an attached FLUX.2 model's call --------------------------------------------------------------------------------

# A layer reaches the op as a small int64 tensor [model serial, layer index], its route token, kept on the device
# the model runs on: inductor assumes any op with a CPU tensor input returns an unaligned buffer, and then the
# kernels reading the attention output lose their vector loads (+33 % on the single-stream blocks' fused kernel
# after attention on an H200, benchmarks/compile_boundary.py). The op finds the layer by the token's address
# (no device sync); the value is read only for a token fluxlab did not place.
_tokens: "dict[int, tuple[int, int, weakref.ref]]" = {}  # data_ptr -> (serial, layer index, the token)

# The op decides the kernel when it runs, so a CUDA graph must not freeze it: inductor keeps the op out of graphs
# it captures (its graph partitioning runs it eagerly between captured parts). Torch without the tag: no capture.
_TAGS = tuple(tag for tag in (getattr(torch.Tag, "cudagraph_unsafe", None),) if tag is not None)


def route_token(serial: int, layer_index: int, device) -> Tensor:
    """A layer's token on ``device``, registered so the op can find the layer without reading device memory."""
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


@torch.library.custom_op("fluxlab::flux2_attention", mutates_args=(), tags=_TAGS)
def flux2_attention_op(q: Tensor, k: Tensor, v: Tensor, route: Tensor, scale: float, causal: bool) -> Tensor:
    """One attention call of an attached FLUX.2 model. ``route`` is the layer's token (``route_token``): a tensor,
    so one compiled block serves every layer (an int constant would recompile per layer)."""
    serial, layer_index = _route_of(route)
    state = _models.get(serial)
    if state is None:
        from .models.errors import AttachError

        raise AttachError("a compiled graph called fluxlab for a FLUX.2 model that is no longer attached; "
                          "re-run the model (detaching restores diffusers' attention and recompiles)")
    out = state.run_attention(state.layer_names[layer_index], q, k, v, scale=scale, causal=causal)
    return _owned(out, q, k, v)


@flux2_attention_op.register_fake
def _(q, k, v, route, scale, causal):
    return _out_like(q, v)


# -- no backward ------------------------------------------------------------------------------------------------------

NO_BACKWARD = ("fluxlab's attention under torch.compile is an op without a backward, and a gradient was asked "
               "through it: call fluxlab.attention (or run the model) outside torch.compile for training, where the "
               "kernels' own autograd works, or run the compiled function under torch.no_grad() / detach its inputs")


@torch.library.custom_op("fluxlab::no_backward", mutates_args=())
def no_backward_op(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stands for the ops' backward in a graph: compiling a graph with one is fine, running it refuses, saying
    why (instead of torch's "no autograd formula was registered")."""
    from .errors import InvalidInputError

    raise InvalidInputError(NO_BACKWARD)


@no_backward_op.register_fake
def _(q, k, v):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _keep_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.others = len(inputs) - 3


def _backward(ctx, *grads):
    return (*torch.ops.fluxlab.no_backward(*ctx.saved_tensors), *([None] * ctx.others))


for _op in (attention_op, attention_lse_op, flux2_attention_op):
    _op.register_autograd(_backward, setup_context=_keep_inputs)
