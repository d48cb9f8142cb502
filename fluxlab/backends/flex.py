"""FlexAttention (torch.nn.attention.flex_attention): compiled with torch.compile on GPU, eager on CPU."""

from __future__ import annotations

import functools
import warnings

import torch

from .base import FLOAT_DTYPES, Backend, Capabilities


@functools.cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if compiled:
        # One specialised kernel per shape; past dynamo's default recompile limit (8) flex would silently
        # drop to the unfused path, so the limit is raised for sweeps over many FLUX shapes.
        import torch._dynamo.config as dynamo_config

        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))
        return torch.compile(flex_attention, dynamic=False)

    # Without torch.compile flex runs an unfused path (S x S scores): chosen deliberately on CPU, where
    # compiling needs a C++ toolchain and minutes; torch's warning about it is silenced here.
    def eager(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(*args, **kwargs)

    return eager


def flex(q, k, v, *, scale, causal=False, return_lse=False, compile="auto"):
    from torch.nn.attention import flex_attention as flex_module

    compiled = (q.device.type == "cuda") if compile == "auto" else bool(compile)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    kwargs = {"scale": scale, "enable_gqa": qh.shape[1] != kh.shape[1]}
    if causal:
        kwargs["block_mask"] = flex_module.create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, B=None,
                                                             H=None, Q_LEN=q.shape[1], KV_LEN=k.shape[1],
                                                             device=q.device)
    if return_lse:
        if hasattr(flex_module, "AuxRequest"):  # torch >= 2.9; return_lse is deprecated there
            out, aux = _flex_fn(compiled)(qh, kh, vh, return_aux=flex_module.AuxRequest(lse=True), **kwargs)
            lse = aux.lse
        else:
            out, lse = _flex_fn(compiled)(qh, kh, vh, return_lse=True, **kwargs)
        return out.transpose(1, 2), lse.float()
    return _flex_fn(compiled)(qh, kh, vh, **kwargs).transpose(1, 2)


def _flex_checks(q, k, platform):
    head_dim = q.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        return [f"flex needs a power-of-two head_dim >= 16, got {head_dim}"]
    return []


BACKENDS = [
    Backend("flex", flex, Capabilities(vendors=frozenset({"nvidia", "amd", "cpu"}), dtypes=FLOAT_DTYPES,
                                       returns_lse=True),
            "FlexAttention (torch.compile'd Triton kernel on GPU; eager reference path on CPU)",
            options={"compile": "auto"}, extra_checks=_flex_checks, aliases=("flex_attention",), diffusers=("flex",)),
]
