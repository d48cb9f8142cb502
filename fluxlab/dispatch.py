"""``fluxlab.attention``: validate the inputs, choose a backend (and say why not the others), call it.

Choice order: the ``backend=`` argument > ``use_backend(...)`` > ``$FLUXLAB_ATTENTION_BACKEND`` > the
platform's priority list. A model may restrict the set (``allowed=``): a choice outside it is refused,
never replaced. Fallback to another backend happens only when the caller opts in, with a warning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import torch

from . import registry
from .backends.base import Backend
from .errors import (BackendNotAllowedError, BackendOutputError, BackendUnavailableError, FallbackWarning,
                     InvalidInputError, NoBackendError)
from .platform import Platform, current_platform, platform_for_device
from .priority import priority_for

ENV_BACKEND = "FLUXLAB_ATTENTION_BACKEND"
ENV_CHECK_FINITE = "FLUXLAB_CHECK_FINITE"
# os.environ.get costs ~2 us (key encoding); the mapping's own dict is read on the hot path instead.
_ENV_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None


_ENV_BACKEND_KEY = ENV_BACKEND.encode()
_ENV_CHECK_FINITE_KEY = ENV_CHECK_FINITE.encode()


def _env_raw(key: bytes, name: str):
    """Undecoded value for cache keys and flags (bytes on POSIX)."""
    return _ENV_DATA.get(key) if _ENV_DATA is not None else os.environ.get(name)


def _finite_checks_on(check_finite: bool | None) -> bool:
    """The caller's choice, else $FLUXLAB_CHECK_FINITE (off unless set to something other than 0/false)."""
    if check_finite is not None:
        return check_finite
    return _env_raw(_ENV_CHECK_FINITE_KEY, ENV_CHECK_FINITE) not in (None, b"", b"0", b"false", "", "0", "false")


def _check_finite(q, k, v) -> None:
    if q.device.type == "meta":
        return
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).sum().item()
            raise InvalidInputError(f"{name} contains {bad} NaN/inf values; attention over them is "
                                    "meaningless. Find where they appear (e.g. fp16 overflow upstream).")


# No model has more heads than this; a larger dim 2 means the tensor is [B, H, S, D].
MAX_PLAUSIBLE_HEADS = 256


# --------------------------------------------------------------------------------------------- choice


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """A backend name with options, e.g. parsed from ``"aiter:how_v3_bf16_cvt=2"``."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def parse(cls, spec: str | BackendChoice, **options) -> BackendChoice:
        if isinstance(spec, BackendChoice):
            merged = dict(spec.options) | options
            return cls(spec.name, tuple(sorted(merged.items())))
        name, _, rest = str(spec).partition(":")
        parsed = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"backend option {item!r} in {spec!r} must be written key=value, "
                                 "e.g. 'aiter:how_v3_bf16_cvt=2'")
            parsed[key.strip()] = _literal(value.strip())
        parsed.update(options)
        backend = registry.get_backend(name)
        unknown = set(parsed) - set(backend.options)
        if unknown:
            valid = ", ".join(sorted(backend.options)) or "none"
            raise ValueError(f"backend '{backend.name}' has no option {sorted(unknown)}; its options: {valid}")
        return cls(backend.name, tuple(sorted(parsed.items())))

    def __str__(self):
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}:{opts}" if opts else self.name


def _literal(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


_UNSET = object()
_current = {"choice": _UNSET, "fallback": False}  # what use_backend set; _UNSET: not used (env applies)


class use_backend:
    """Choose the backend for every ``fluxlab.attention`` call: ``with use_backend("fa4"): ...`` or,
    as a plain setter, ``use_backend("fa4")``. ``use_backend(None)`` means automatic choice (it also
    overrides the environment variable); leaving a ``with`` block restores what was there before.
    Options go through: ``use_backend("aiter", how_v3_bf16_cvt=0)``.
    """

    def __init__(self, name: str | None, *, fallback: bool = False, **options):
        self.choice = BackendChoice.parse(name, **options) if name is not None else None
        self._previous = dict(_current)
        _current.update(choice=self.choice, fallback=fallback)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _current.update(self._previous)
        return False


def reset_backend_choice() -> None:
    """Forget every ``use_backend`` setting: the environment variable and priority list apply again."""
    _current.update(choice=_UNSET, fallback=False)


def selected_backend() -> BackendChoice | None:
    """What ``use_backend`` or the environment currently asks for (None: automatic)."""
    if _current["choice"] is not _UNSET:
        return _current["choice"]
    env = os.environ.get(ENV_BACKEND, "").strip()
    return BackendChoice.parse(env) if env else None


# --------------------------------------------------------------------------------------------- checks


def _shape(t) -> str:
    return "x".join(map(str, t.shape))


def validate_inputs(q, k, v, *, scale=None, causal=False, heads: int | None = None,
                    check_finite: bool | None = None) -> None:
    """Raise InvalidInputError naming the problem and the fix, or return None."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise InvalidInputError(
                f"{name} has {t.dim()} dims (shape {_shape(t)}); fluxlab attention takes 4-D "
                "[batch, seq, heads, head_dim] tensors. For [batch*heads, seq, head_dim] use "
                ".unflatten(0, (batch, heads)).transpose(1, 2); for [batch, seq, heads*head_dim] "
                "use .unflatten(-1, (heads, head_dim)).")
        if not t.dtype.is_floating_point:
            raise InvalidInputError(f"{name} has dtype {t.dtype}; attention needs a floating dtype "
                                    "(float16, bfloat16, float32 or float64)")
        if 0 in t.shape:
            raise InvalidInputError(f"{name} is empty (shape {_shape(t)}); every dim must be >= 1")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise InvalidInputError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one "
                                "dtype, e.g. k = k.to(q.dtype)")
    if q.device != k.device or q.device != v.device:
        raise InvalidInputError(f"q, k, v are on different devices ({q.device}, {k.device}, {v.device}); "
                                "move them to one device")
    if heads is not None and q.shape[2] != heads:
        hint = (" It looks like [batch, heads, seq, head_dim]: pass q.transpose(1, 2)."
                if q.shape[1] == heads else "")
        raise InvalidInputError(f"q has {q.shape[2]} heads in dim 2 (shape {_shape(q)}) but the model "
                                f"declares {heads} heads.{hint}")
    for name, t in (("q", q), ("k", k)):
        if t.shape[2] > MAX_PLAUSIBLE_HEADS:
            raise InvalidInputError(
                f"{name} has {t.shape[2]} in the heads dim (shape {_shape(t)}); no model has that many heads, "
                "so this is likely a [batch, heads, seq, head_dim] tensor. fluxlab takes "
                "[batch, seq, heads, head_dim]: pass t.transpose(1, 2).")
    if q.shape[0] != k.shape[0] or q.shape[0] != v.shape[0]:
        raise InvalidInputError(f"batch sizes differ: q {_shape(q)}, k {_shape(k)}, v {_shape(v)}")
    if k.shape[1] != v.shape[1]:
        raise InvalidInputError(f"k and v sequence lengths differ ({k.shape[1]} vs {v.shape[1]}); "
                                "each key needs a value")
    if q.shape[3] != k.shape[3]:
        raise InvalidInputError(f"q and k head dims differ ({q.shape[3]} vs {k.shape[3]}); q.k needs equal "
                                f"head_dim (shapes q {_shape(q)}, k {_shape(k)})")
    if k.shape[2] != v.shape[2]:
        raise InvalidInputError(f"k and v head counts differ ({k.shape[2]} vs {v.shape[2]})")
    if q.shape[2] % k.shape[2]:
        raise InvalidInputError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value heads; "
                                "grouped-query attention needs q heads = n x kv heads")
    if scale is not None:
        if isinstance(scale, torch.Tensor) or not isinstance(scale, (int, float)):
            raise InvalidInputError(f"scale must be a Python float, got {type(scale).__name__}")
        if not math.isfinite(scale) or scale <= 0:
            raise InvalidInputError(f"scale must be a finite number > 0, got {scale}; the usual softmax "
                                    f"scale is head_dim ** -0.5 = {q.shape[-1] ** -0.5:.6g}")
    if causal and q.shape[1] != k.shape[1]:
        raise InvalidInputError(
            f"causal attention with seq_q {q.shape[1]} != seq_k {k.shape[1]} is ambiguous (kernels align the "
            "mask top-left or bottom-right); fluxlab supports causal only for equal lengths")
    if _finite_checks_on(check_finite):
        _check_finite(q, k, v)


# ------------------------------------------------------------------------------------------ selection


@dataclasses.dataclass(frozen=True)
class Selection:
    backend: Backend
    options: dict
    requested: str | None  # what the caller asked for (None = automatic)
    substituted_reasons: tuple[str, ...] = ()  # non-empty when fallback replaced the request


def _describe_inputs(q, k, v, causal, return_lse) -> str:
    return (f"q {_shape(q)}, k {_shape(k)}, v {_shape(v)} [batch, seq, heads, head_dim], dtype "
            f"{str(q.dtype).replace('torch.', '')}, device {q.device}, causal={causal}, return_lse={return_lse}")


def _reasons_for(backend: Backend, q, k, v, platform, causal, return_lse, allowed) -> list[str]:
    reasons = []
    if allowed is not None and backend.name not in allowed:
        reasons.append(f"outside the model's allowed set ({', '.join(sorted(allowed))})")
    return reasons + backend.not_supported_reasons(q, k, v, platform, causal=causal, return_lse=return_lse)


def _auto(q, k, v, platform, causal, return_lse, allowed) -> Backend | None:
    for name in priority_for(platform):
        backend = registry.get_backend(name)
        if not _reasons_for(backend, q, k, v, platform, causal, return_lse, allowed):
            return backend
    return None


def _everything_refused(q, k, v, platform, causal, return_lse, allowed, headline) -> NoBackendError:
    reasons = {b.name: _reasons_for(b, q, k, v, platform, causal, return_lse, allowed)
               for b in registry.all_backends()}
    lines = [f"  {name}: {'; '.join(r) if r else 'could run, but is not on the priority list'}"
             for name, r in reasons.items()]
    return NoBackendError(f"{headline}\nInputs: {_describe_inputs(q, k, v, causal, return_lse)}; platform: "
                          f"{platform.describe()}.\nEvery backend:\n" + "\n".join(lines), reasons)


_cache: dict = {}


def clear_caches() -> None:
    """Forget cached backend decisions (call after installing a kernel package into a running session)."""
    _cache.clear()
    _plans.clear()


def select_backend(q, k, v, *, backend=None, causal=False, return_lse=False, allowed=None, fallback=None,
                   platform: Platform | None = None) -> Selection:
    """Decide which backend would run these inputs, without running it. Raises with reasons."""
    platform = platform or platform_for_device(q.device)
    fallback_default = False
    if backend is None:
        choice = selected_backend()
        fallback_default = _current["fallback"] if _current["choice"] is not _UNSET else False
    else:
        choice = BackendChoice.parse(backend)
    fallback = fallback_default if fallback is None else fallback
    allowed = frozenset(registry.canonical_name(n) for n in allowed) if allowed is not None else None
    key = (choice, fallback, allowed, platform, q.dtype, q.device.type, q.shape[2], k.shape[2], q.shape[3],
           v.shape[3], causal, return_lse, registry.generation())
    hit = _cache.get(key)
    if hit is not None:
        return hit
    selection = _select_uncached(q, k, v, choice, causal, return_lse, allowed, fallback, platform)
    if q.device.type != "cuda" or not selection.backend.extra_checks:
        _cache[key] = selection  # torch's CUDA checks can depend on sequence length: not cached
    return selection


def _select_uncached(q, k, v, choice, causal, return_lse, allowed, fallback, platform) -> Selection:
    if choice is None:
        backend = _auto(q, k, v, platform, causal, return_lse, allowed)
        if backend is None:
            raise _everything_refused(q, k, v, platform, causal, return_lse, allowed,
                                      "No attention backend can run these inputs.")
        return Selection(backend, {}, None)
    requested = registry.get_backend(choice.name)
    options = dict(requested.options) | dict(choice.options)
    if allowed is not None and requested.name not in allowed:
        raise BackendNotAllowedError(
            f"backend '{requested.name}' is outside this model's allowed set "
            f"({', '.join(sorted(allowed))}); fluxlab refuses instead of falling back to another kernel. "
            "Widen the set (fluxlab.attach(..., allowed=...)) or choose one of those.",
            {requested.name: ["outside the model's allowed set"]})
    reasons = requested.not_supported_reasons(q, k, v, platform, causal=causal, return_lse=return_lse)
    if not reasons:
        return Selection(requested, options, requested.name)
    message = (f"backend '{requested.name}' cannot run here:\n  - " + "\n  - ".join(reasons) +
               f"\nInputs: {_describe_inputs(q, k, v, causal, return_lse)}; platform: {platform.describe()}.")
    if not fallback:
        raise BackendUnavailableError(message + "\nChoose another backend (fluxlab doctor lists them) or opt "
                                      "into fallback=True.", {requested.name: reasons})
    substitute = _auto(q, k, v, platform, causal, return_lse, allowed)
    if substitute is None:
        raise _everything_refused(q, k, v, platform, causal, return_lse, allowed,
                                  message + "\nFallback was allowed, but nothing else can run either.")
    return dataclasses.replace(Selection(substitute, {}, requested.name), substituted_reasons=tuple(reasons))


# ------------------------------------------------------------------------------------------- calling


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything decided for one kind of call; reused while shapes, dtypes, devices and choice repeat."""

    fn: object
    options: dict
    scale: float
    out_shape: tuple
    backend_name: str
    warning: str | None


_plans: dict = {}
_MAX_PLANS = 4096


def _make_plan(q, k, v, backend, scale, causal, return_lse, allowed, fallback, heads, platform) -> _Plan:
    validate_inputs(q, k, v, scale=scale, causal=causal, heads=heads, check_finite=False)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])  # the same double torch computes for scale=None
    selection = select_backend(q, k, v, backend=backend, causal=causal, return_lse=return_lse,
                               allowed=allowed, fallback=fallback, platform=platform)
    chosen = _concrete(selection.backend, q, k, platform, causal, return_lse)
    warning = None
    if selection.substituted_reasons:
        warning = (f"fluxlab: '{selection.requested}' cannot run ({'; '.join(selection.substituted_reasons)}); "
                   f"using '{chosen.name}' instead (fallback=True)")
    return _Plan(chosen.fn, selection.options, float(scale), (*q.shape[:3], v.shape[3]), chosen.name, warning)


def attention(q, k, v, *, backend=None, scale=None, causal=False, return_lse=False, allowed=None,
              fallback=None, heads=None, check_finite=None, platform=None):
    """Attention over ``[batch, seq, heads, head_dim]`` tensors; returns ``[batch, seq, heads, head_dim]``.

    ``scale`` defaults to ``head_dim ** -0.5`` and is always passed to the kernel explicitly. With
    ``return_lse=True`` returns ``(out, lse)``: natural-log log-sum-exp, float32, ``[batch, heads, seq]``.
    Decisions are cached per call signature, so a model's repeated calls pay a dictionary lookup.
    """
    if allowed is not None and type(allowed) is not frozenset:
        allowed = frozenset(allowed)
    try:
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, backend,
               scale, causal, return_lse, allowed, fallback, heads, platform, _current["choice"],
               _current["fallback"],
               _ENV_DATA.get(_ENV_BACKEND_KEY) if _ENV_DATA is not None else os.environ.get(ENV_BACKEND),
               registry._generation)
        plan = _plans.get(key)
    except (AttributeError, TypeError):  # not tensors, or unhashable arguments: the slow path explains
        key = plan = None
    first_call = plan is None
    if first_call:
        plan = _make_plan(q, k, v, backend, scale, causal, return_lse, allowed, fallback, heads, platform)
        if key is not None:
            if len(_plans) >= _MAX_PLANS:
                _plans.clear()
            _plans[key] = plan
    if _finite_checks_on(check_finite):  # data-dependent, so never part of the cached plan
        _check_finite(q, k, v)
    if plan.warning:
        warnings.warn(plan.warning, FallbackWarning, stacklevel=2)
    result = plan.fn(q, k, v, scale=plan.scale, causal=causal, return_lse=return_lse, **plan.options)
    out = result[0] if return_lse and isinstance(result, tuple) else result
    if first_call or getattr(out, "shape", None) != plan.out_shape or out.dtype != q.dtype:
        check_output(result, q, v, return_lse=return_lse, backend_name=plan.backend_name)
    return result


def _concrete(backend: Backend, q, k, platform, causal, return_lse) -> Backend:
    """``fa`` stands for the best FlashAttention generation that runs these inputs; others are themselves."""
    resolve = getattr(backend, "resolve", None)
    if resolve is None:
        return backend
    concrete = resolve(q, k, platform or platform_for_device(q.device), causal=causal, return_lse=return_lse)
    if concrete is None:
        raise BackendUnavailableError(f"backend '{backend.name}' has no runnable generation here")
    return concrete


def run_backend(backend: Backend, q, k, v, *, scale, causal=False, return_lse=False, platform=None, **options):
    """Call one backend and check what it returns against the contract."""
    backend = _concrete(backend, q, k, platform, causal, return_lse)
    result = backend.fn(q, k, v, scale=scale, causal=causal, return_lse=return_lse, **options)
    check_output(result, q, v, return_lse=return_lse, backend_name=backend.name)
    return result


def check_output(result, q, v, *, return_lse: bool, backend_name: str) -> None:
    if return_lse:
        if not (isinstance(result, tuple) and len(result) == 2):
            raise BackendOutputError(f"backend '{backend_name}' was asked for (out, lse) but returned "
                                     f"{type(result).__name__}")
        out, lse = result
    else:
        out, lse = result, None
    if not isinstance(out, torch.Tensor):
        raise BackendOutputError(f"backend '{backend_name}' returned {type(out).__name__}, not a tensor")
    expected = (q.shape[0], q.shape[1], q.shape[2], v.shape[3])
    if tuple(out.shape) != expected:
        raise BackendOutputError(f"backend '{backend_name}' returned shape {tuple(out.shape)}; the contract is "
                                 f"[batch, seq, heads, head_dim] = {expected}")
    if out.dtype != q.dtype:
        raise BackendOutputError(f"backend '{backend_name}' returned dtype {out.dtype} for {q.dtype} inputs")
    if lse is not None:
        want = (q.shape[0], q.shape[2], q.shape[1])
        if tuple(lse.shape) != want or lse.dtype != torch.float32:
            raise BackendOutputError(f"backend '{backend_name}' returned lse {tuple(lse.shape)} {lse.dtype}; the "
                                     f"contract is float32 [batch, heads, seq] = {want}")


def default_backend(q=None, *, platform: Platform | None = None) -> str | None:
    """The backend automatic choice picks on this machine for FLUX-shaped bf16 inputs (or ``q``'s kind)."""
    platform = platform or current_platform()
    if q is None:
        dtype = torch.bfloat16 if platform.bf16 else torch.float16
        q = torch.empty(1, 4608, 24, 128, dtype=dtype, device="meta")
    backend = _auto(q, q, q, platform, False, False, None)
    return backend.name if backend else None
