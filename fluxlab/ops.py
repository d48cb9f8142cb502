"""fluxlab's attention as ``torch.library`` custom ops: one opaque node per call for ``torch.compile``, so dynamo
never traces the dispatcher and the backend is chosen when the op runs (docs/compile.md); an attached FLUX.2
model's call is ``fluxlab::flux2_attention`` (models/router.py). Outputs are contiguous
``[B, S, H, D]`` (what the fakes promise); nothing returned aliases an input."""

# No ``from __future__ import annotations``: torch.library reads the annotations to build the op schemas.

from typing import Optional

import torch
from torch import Tensor

from .errors import InvalidInputError


def _owned(result: Tensor, *inputs: Tensor) -> Tensor:
    """Contiguous and not sharing storage with an input (a custom op's output may not alias its inputs)."""
    result = result.contiguous()
    pointer = result.untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() == pointer for t in inputs):
        result = result.clone()
    return result


def _out_like(q: Tensor, v: Tensor) -> Tensor:
    return q.new_empty((*q.shape[:3], v.shape[3]))


# fluxlab.attention, handed over by fluxlab/dispatch.py when it loads (this module sits below the dispatcher).
_dispatcher: list = [None]


def use_dispatcher(attention) -> None:
    _dispatcher[0] = attention


def _eager(q, k, v, backend, scale, causal, return_lse, allowed, fallback, heads, check_finite):
    allowed = None if allowed is None else frozenset(filter(None, allowed.split(",")))
    return _dispatcher[0](q, k, v, backend=backend, scale=scale, causal=causal, return_lse=return_lse,
                          allowed=allowed, fallback=fallback, heads=heads, check_finite=check_finite)


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
    return _out_like(q, v), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


def compiled_attention(q, k, v, *, backend=None, scale=None, causal=False, return_lse=False, allowed=None,
                       fallback=None, heads=None, check_finite=None, platform=None):
    """What ``fluxlab.attention`` calls while dynamo traces it: the custom op, with the same arguments."""
    if platform is not None:
        raise InvalidInputError("fluxlab.attention(platform=...) is not available under torch.compile (a Platform "
                                "cannot be an op argument); leave it out (the inputs' device decides) or call "
                                "fluxlab.attention outside the compiled function.")
    spec = None if backend is None else str(backend)  # a BackendChoice prints as "name:option=value"
    scale = None if scale is None else float(scale)
    names = None if allowed is None else ",".join(sorted(allowed))
    op = torch.ops.fluxlab.attention_lse if return_lse else torch.ops.fluxlab.attention
    return op(q, k, v, spec, scale, bool(causal), names, fallback, heads, check_finite)


NO_BACKWARD = ("fluxlab's attention under torch.compile is an op without a backward, and a gradient was asked "
               "through it: call fluxlab.attention (or run the model) outside torch.compile for training, where the "
               "kernels' own autograd works, or run the compiled function under torch.no_grad() / detach its inputs")


@torch.library.custom_op("fluxlab::no_backward", mutates_args=())
def no_backward_op(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ops' backward: compiling a graph with it is fine, running it refuses, saying why."""
    raise InvalidInputError(NO_BACKWARD)


@no_backward_op.register_fake
def _(q, k, v):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _keep_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.others = len(inputs) - 3


def _backward(ctx, *grads):
    return (*torch.ops.fluxlab.no_backward(*ctx.saved_tensors), *([None] * ctx.others))


for _op in (attention_op, attention_lse_op):
    _op.register_autograd(_backward, setup_context=_keep_inputs)
