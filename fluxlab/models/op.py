"""An attached FLUX.2 model's attention call as the ``fluxlab::flux2_attention`` custom op, for ``torch.compile``.

Like ``fluxlab::attention`` (fluxlab/ops.py) the op is opaque to dynamo and decides the kernel when it runs, so
``set_backend`` / ``use_backend`` / schedules change what runs without a recompile.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations to build the op schemas.

import weakref

import torch
from torch import Tensor

from ..ops import _out_like, _owned
from .errors import AttachError

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


# A layer reaches the op as a small int64 tensor [model serial, layer index], its route token, kept on the device
# the model runs on: inductor assumes any op with a CPU tensor input returns an unaligned buffer, and then the
# kernels reading the attention output lose their vector loads (benchmarks/compile_boundary.py measures the cost on
# the single-stream blocks' fused kernel after attention). The op finds the layer by the token's address
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
        raise AttachError("a compiled graph called fluxlab for a FLUX.2 model that is no longer attached; "
                          "re-run the model (detaching restores diffusers' attention and recompiles)")
    out = state.run_attention(state.layer_names[layer_index], q, k, v, scale=scale, causal=causal)
    return _owned(out, q, k, v)


@flux2_attention_op.register_fake
def _(q, k, v, route, scale, causal):
    return _out_like(q, v)
