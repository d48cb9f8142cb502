"""``fluxlab.plan`` and ``fluxlab.attention``: validate the inputs, decide what runs, run it.

How the choice is made, what a ``Plan`` holds and why each input check is as it is: docs/dispatch.md.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import os
import warnings

import torch

from . import registry
from .backends.base import Backend
from .choice import BackendChoice
from .errors import (BackendNotAllowedError, BackendOutputError, BackendUnavailableError, FallbackWarning,
                     InvalidBackendSpecError, InvalidInputError, LayoutWarning, NoBackendError, UnknownBackendError)
from .ops import compiled_attention, use_dispatcher
from .platform import Platform, current_platform, platform_for_device
from .util import torch_dtype_name

ENV_BACKEND = "FLUXLAB_ATTENTION_BACKEND"
ENV_CHECK_FINITE = "FLUXLAB_CHECK_FINITE"
# os.environ.get encodes the key on every call; the hot path reads the mapping's own (undecoded) dict instead.
_ENV_DATA = getattr(os.environ, "_data", None) if os.name == "posix" else None
_ENV_BACKEND_KEY, _ENV_CHECK_FINITE_KEY = ENV_BACKEND.encode(), ENV_CHECK_FINITE.encode()


def _env_raw(key: bytes, name: str):
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
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise InvalidInputError(f"{name} contains {bad} NaN/inf values; attention over them is "
                                    "meaningless. Find where they appear (e.g. fp16 overflow upstream).")


MAX_PLAUSIBLE_HEADS = 256  # no model has more heads; a larger dim 2 means the tensor is [B, H, S, D]
_LAYOUT_WARNED: set = set()  # q shapes already warned about (a head axis longer than the sequence axis)


# ------------------------------------------------------------------------------- choice (context-local)


_SETTINGS: contextvars.ContextVar[tuple] = contextvars.ContextVar("fluxlab_use_backend", default=())


class _Setting:
    """One ``use_backend`` entry of this context's stack; a ``with`` block removes exactly this entry on exit."""

    def __init__(self, choice: BackendChoice | None, fallback: bool):
        self.choice, self.fallback, self.scoped = choice, fallback, False
        self.key = (choice, fallback)  # what plan caches are keyed on

    def __enter__(self):
        self.scoped = True
        return self

    def __exit__(self, *exc):
        _SETTINGS.set(tuple(s for s in _SETTINGS.get() if s is not self))
        return False

    def __repr__(self):
        return f"use_backend({str(self.choice) if self.choice else None!r}, fallback={self.fallback})"


def use_backend(name: str | BackendChoice | None, *, fallback: bool = False, **options) -> _Setting:
    """Choose the backend for ``fluxlab.attention`` calls in this thread / task: ``with use_backend("fa4"): ...``
    or, as a plain setter, ``use_backend("fa4")``; ``None``: automatic choice (overrides the environment
    variable). Options go through: ``use_backend("aiter", how_v3_bf16_cvt=0)``. Context-local: docs/dispatch.md.
    """
    setting = _Setting(BackendChoice.parse(name, **options) if name is not None else None, bool(fallback))
    kept: list = []
    for entry in _SETTINGS.get():  # consecutive plain setters (never entered as a ``with`` block): the latest counts
        if kept and not entry.scoped and not kept[-1].scoped:
            kept[-1] = entry
        else:
            kept.append(entry)
    _SETTINGS.set((*kept, setting))
    return setting


def reset_backend_choice() -> None:
    """Forget every ``use_backend`` setting of this context: the environment variable and priority list apply."""
    _SETTINGS.set(())


_env_choices: dict = {}


def _env_choice() -> BackendChoice | None:
    """$FLUXLAB_ATTENTION_BACKEND parsed (once per value); a bad value raises naming the variable."""
    raw = _env_raw(_ENV_BACKEND_KEY, ENV_BACKEND)
    if raw in _env_choices:
        return _env_choices[raw]
    text = (raw.decode() if isinstance(raw, bytes) else raw or "").strip()
    try:
        choice = BackendChoice.parse(text) if text else None
    except (UnknownBackendError, InvalidBackendSpecError) as exc:
        raise InvalidBackendSpecError(
            f"environment variable {ENV_BACKEND}={text!r} is not a valid backend choice: {exc} Fix or unset it "
            f"(e.g. `export {ENV_BACKEND}=sdpa`, or `unset {ENV_BACKEND}` for automatic choice).") from None
    _env_choices[raw] = choice
    return choice


def selected_backend() -> BackendChoice | None:
    """What ``use_backend`` (in this context) or the environment currently asks for (None: automatic)."""
    return _requested(None, None)[0]


def _requested(backend, fallback) -> tuple[BackendChoice | None, bool]:
    """The choice that applies (argument > use_backend > environment) and whether fallback is allowed."""
    if backend is not None:
        return BackendChoice.parse(backend), bool(fallback)
    if stack := _SETTINGS.get():
        return stack[-1].choice, stack[-1].fallback if fallback is None else bool(fallback)
    return _env_choice(), bool(fallback)


# --------------------------------------------------------------------------------------------- checks


def validate_inputs(q, k, v, *, scale=None, causal=False, heads: int | None = None,
                    check_finite: bool | None = None) -> None:
    """Raise InvalidInputError naming the problem and the fix, or return None. ``heads`` (the model's query-head
    count) lets the layout check catch a ``[B, H, S, D]`` tensor (docs/dispatch.md, "Input checks")."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise InvalidInputError(
                f"{name} has {t.dim()} dims (shape {_dims(t.shape)}); fluxlab attention takes 4-D "
                "[batch, seq, heads, head_dim] tensors. For [batch*heads, seq, head_dim] use "
                ".unflatten(0, (batch, heads)).transpose(1, 2); for [batch, seq, heads*head_dim] "
                "use .unflatten(-1, (heads, head_dim)).")
        if not t.dtype.is_floating_point:
            raise InvalidInputError(f"{name} has dtype {t.dtype}; attention needs a floating dtype "
                                    "(float16, bfloat16, float32 or float64)")
        if 0 in t.shape:
            raise InvalidInputError(f"{name} is empty (shape {_dims(t.shape)}); every dim must be >= 1")
    (batch, seq, q_heads, dim), (k_batch, k_seq, k_heads, k_dim) = q.shape, k.shape
    v_batch, v_seq, v_heads, _ = v.shape
    transposed = " It looks like [batch, heads, seq, head_dim]: pass q.transpose(1, 2)." if seq == heads else ""
    refusals = [
        (q.dtype != k.dtype or q.dtype != v.dtype, f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast "
                                                   "them to one dtype, e.g. k = k.to(q.dtype)"),
        (q.device != k.device or q.device != v.device, f"q, k, v are on different devices ({q.device}, {k.device}, "
                                                       f"{v.device}); move them to one device"),
        (heads is not None and q_heads != heads, f"q has {q_heads} heads in dim 2 (shape {_dims(q.shape)}) but the "
                                                 f"model declares {heads} heads.{transposed}"),
        *((t.shape[2] > MAX_PLAUSIBLE_HEADS, f"{name} has {t.shape[2]} in the heads dim (shape {_dims(t.shape)}); no "
           "model has that many heads, so this is likely a [batch, heads, seq, head_dim] tensor. fluxlab takes "
           "[batch, seq, heads, head_dim]: pass t.transpose(1, 2).") for name, t in (("q", q), ("k", k))),
        (batch != k_batch or batch != v_batch, f"batch sizes differ: q {_dims(q.shape)}, k {_dims(k.shape)}, "
                                               f"v {_dims(v.shape)}"),
        (k_seq != v_seq, f"k and v sequence lengths differ ({k_seq} vs {v_seq}); each key needs a value"),
        (dim != k_dim, f"q and k head dims differ ({dim} vs {k_dim}); q.k needs equal head_dim (shapes "
                       f"q {_dims(q.shape)}, k {_dims(k.shape)})"),
        (k_heads != v_heads, f"k and v head counts differ ({k_heads} vs {v_heads})"),
        (q_heads % k_heads != 0, f"{q_heads} query heads are not a multiple of {k_heads} key/value heads; "
                                 "grouped-query attention needs q heads = n x kv heads"),
        (causal and seq != k_seq, f"causal attention with seq_q {seq} != seq_k {k_seq} is ambiguous (kernels align "
                                  "the mask top-left or bottom-right); fluxlab supports causal only for equal lengths"),
    ]
    for refused, message in refusals:
        if refused:
            raise InvalidInputError(message)
    if heads is None and q_heads > seq and q.shape not in _LAYOUT_WARNED:
        _LAYOUT_WARNED.add(q.shape)
        warnings.warn(
            f"q has {q_heads} in the heads dim but {seq} in the sequence dim (shape {_dims(q.shape)}): if it is "
            f"[batch, heads, seq, head_dim], pass q.transpose(1, 2) (and k, v); if {q_heads} heads is right, pass "
            f"heads={q_heads} to confirm the layout. fluxlab takes [batch, seq, heads, head_dim]; this warning is "
            "shown once per shape.", LayoutWarning, stacklevel=4)
    if scale is not None:
        if isinstance(scale, (torch.Tensor, bool)) or not isinstance(scale, (int, float)):
            raise InvalidInputError(f"scale must be a Python float, got {type(scale).__name__}")
        if not math.isfinite(scale) or scale <= 0:
            raise InvalidInputError(f"scale must be a finite number > 0, got {scale}; the usual softmax "
                                    f"scale is head_dim ** -0.5 = {q.shape[-1] ** -0.5:.6g}")
    if _finite_checks_on(check_finite):
        _check_finite(q, k, v)


def check_scale_fits(q, k, scale: float) -> None:
    """Refuse a scale with which the scores ``scale * q.k`` can overflow (the rule: docs/dispatch.md, "Scale")."""
    accumulator = torch.float64 if q.dtype == torch.float64 else torch.float32
    limit = torch.finfo(accumulator).max
    usual = f"the usual scale is head_dim ** -0.5 = {q.shape[-1] ** -0.5:.6g}"
    if scale > limit:
        raise InvalidInputError(f"scale {scale:g} is beyond {accumulator}'s largest value {limit:.3g}, so every "
                                f"score overflows; {usual}")
    if q.device.type == "meta":
        return
    q_max, k_max = q.detach().abs().amax().item(), k.detach().abs().amax().item()
    if not math.isfinite(q_max * k_max):
        return  # NaN/inf inputs: the finite check (check_finite=True) names them
    bound = scale * q.shape[-1] * q_max * k_max
    if bound > limit:
        raise InvalidInputError(
            f"scale {scale:g} can overflow the attention scores: |scale * q.k| <= scale x head_dim x max|q| x "
            f"max|k| = {scale:g} x {q.shape[-1]} x {q_max:.3g} x {k_max:.3g} = {bound:.3g}, beyond "
            f"{torch_dtype_name(accumulator)}'s largest value {limit:.3g} (kernels hold scores in it); "
            f"the softmax of inf scores is NaN. Use a smaller scale ({usual}) or rescale q and k.")
    dtype_limit = torch.finfo(q.dtype).max
    if math.sqrt(scale) * max(q_max, k_max) > dtype_limit:
        raise InvalidInputError(
            f"scale {scale:g} overflows {torch_dtype_name(q.dtype)} when q and k are pre-scaled by "
            f"sqrt(scale) (as SDPA's math kernel does): sqrt(scale) x max(|q|, |k|) = "
            f"{math.sqrt(scale) * max(q_max, k_max):.3g} > {dtype_limit:.3g}. Use a smaller scale ({usual}), "
            "rescale q and k, or use float32 inputs.")


# ------------------------------------------------------------------------------------------ selection


@dataclasses.dataclass(frozen=True)
class Call:
    """One kind of attention call, described once: what selection judges every backend against."""

    q_shape: torch.Size
    k_shape: torch.Size
    v_shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    causal: bool
    return_lse: bool
    lse_grad: bool  # the LSE is asked for and the inputs require grad (its backward must exist)
    platform: Platform
    allowed: frozenset[str] | None  # canonical names (a group brings its members); None: any backend

    @classmethod
    def of(cls, q, k, v, *, causal=False, return_lse=False, lse_grad=False, platform=None, allowed=None) -> Call:
        return cls(q.shape, k.shape, v.shape, q.dtype, q.device, bool(causal), bool(return_lse), bool(lse_grad),
                   platform or platform_for_device(q.device), allowed)

    @functools.cached_property
    def out_shape(self) -> torch.Size:  # [B, S, H, D_v]: what the kernel must return (read on every call)
        return torch.Size((*self.q_shape[:3], self.v_shape[3]))

    def meta(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shape-only stand-ins for the inputs (judging again later needs no tensor kept alive)."""
        shapes = (self.q_shape, self.k_shape, self.v_shape)
        return tuple(torch.empty(s, dtype=self.dtype, device="meta") for s in shapes)

    def shapes(self) -> str:
        return f"q {_dims(self.q_shape)}, k {_dims(self.k_shape)}, v {_dims(self.v_shape)}"

    def describe(self) -> str:
        return (f"{self.shapes()} [batch, seq, heads, head_dim], dtype {torch_dtype_name(self.dtype)}, device "
                f"{self.device}, causal={self.causal}, return_lse={self.return_lse}; platform: "
                f"{self.platform.describe()}")


_CALL_FIELDS = frozenset(f.name for f in dataclasses.fields(Call)) - {"allowed", "lse_grad"}


class Reasons:
    """Why each backend cannot run one ``Call``, each computed once (on the real inputs while they are at hand,
    on shape-only stand-ins afterwards) and kept: the plan, its errors, ``doctor`` and the widgets read them."""

    def __init__(self, call: Call, tensors=None):
        self.call = call
        self._tensors = tensors
        self.by_backend: dict[str, list[str]] = {}

    def __call__(self, backend) -> list[str]:
        if backend.name not in self.by_backend:
            call = self.call
            found = []
            if call.allowed is not None and backend.name not in call.allowed:
                found.append(f"outside the model's allowed set ({', '.join(sorted(call.allowed))})")
            found += backend.not_supported_reasons(*(self._tensors or call.meta()), call.platform, causal=call.causal,
                                                   return_lse=call.return_lse, lse_grad=call.lse_grad)
            self.by_backend[backend.name] = found
        return self.by_backend[backend.name]

    def why_not(self, backend, picked: str | None, requested: str | None = None) -> list[str]:
        """Why ``backend`` is not ``picked``: its reasons not to run, or why a backend that could run was passed
        over (``requested``: the name the caller asked for, None for the automatic choice)."""
        if self(backend):
            return list(self(backend))
        if requested is not None:
            return [f"could run, but '{requested}' was asked for"]
        order = registry.priority_for(self.call.platform)
        if backend.name in order and picked in order and order.index(backend.name) > order.index(picked):
            return [f"could run, but ranked below {picked} (its declared priority)"]
        return ["could run, but is never picked automatically: choose it explicitly"]

    def release_inputs(self) -> None:
        self._tensors = None

    def automatic(self) -> Backend | None:
        """The first backend of the platform's priority list with no reason not to run."""
        return self.first(registry.get_backend(name) for name in registry.priority_for(self.call.platform))

    def first(self, candidates) -> Backend | None:
        return next((backend for backend in candidates if not self(backend)), None)

    def nothing_runs(self, headline: str) -> NoBackendError:
        reasons = {b.name: self(b) for b in registry.all_backends()}
        lines = [f"  {name}: {'; '.join(r) if r else 'could run, but is not on the priority list'}"
                 for name, r in reasons.items()]
        return NoBackendError(f"{headline}\nInputs: {self.call.describe()}.\nEvery backend:\n" + "\n".join(lines),
                              reasons)


def _canonical_allowed(allowed) -> frozenset[str] | None:
    """Canonical names; a group (``fa``) allows its members too."""
    if allowed is None:
        return None
    names = {registry.canonical_name(n) for n in allowed}
    members = [m.name for g in registry.all_groups() if g.name in names for m in g.all_members()]
    return frozenset(names.union(members))


def _select(reasons: Reasons, choice: BackendChoice | None, fallback: bool):
    """-> (backend or group, options, warning or None). Raises with every reason when nothing may run."""
    call = reasons.call
    if choice is None:
        backend = reasons.automatic()
        if backend is None:
            raise reasons.nothing_runs("No attention backend can run these inputs.")
        return backend, {}, None
    requested = registry.get_backend(choice.name)
    if call.allowed is not None and requested.name not in call.allowed:
        raise BackendNotAllowedError(
            f"backend '{requested.name}' is outside this model's allowed set "
            f"({', '.join(sorted(call.allowed))}); fluxlab refuses instead of falling back to another kernel. "
            "Widen the set (fluxlab.attach(..., allowed=...)) or choose one of those.",
            {requested.name: ["outside the model's allowed set"]})
    refused = reasons(requested)
    if not refused:
        return requested, dict(requested.options) | dict(choice.options), None
    message = (f"backend '{requested.name}' cannot run here:\n  - " + "\n  - ".join(refused) +
               f"\nInputs: {call.describe()}.")
    if not fallback:
        raise BackendUnavailableError(message + "\nChoose another backend (fluxlab doctor lists them) or opt "
                                      "into fallback=True.", {requested.name: refused})
    substitute = reasons.automatic()
    if substitute is None:
        raise reasons.nothing_runs(message + "\nFallback was allowed, but nothing else can run either.")
    warning = (f"fluxlab: '{requested.name}' cannot run ({'; '.join(refused)}); using '{substitute.name}' "
               "instead (fallback=True)")
    return substitute, {}, warning


def _concrete(backend, reasons: Reasons) -> Backend:
    """A group (``fa``) stands for its best member that runs these inputs; a backend is itself."""
    if not hasattr(backend, "members"):
        return backend
    members = backend.members(reasons.call.platform)
    if member := reasons.first(members):
        return member
    raise BackendUnavailableError(f"group '{backend.name}' has no member that can run these inputs here: " +
                                  "; ".join(f"{m.name}: {'; '.join(reasons(m))}" for m in members),
                                  {backend.name: ["no runnable member"]})


def _bind(backend: Backend, choice: BackendChoice | None):
    """The backend's kernel with its library imported now; with torch knobs held around each call."""
    try:
        kernel = backend.kernel()
    except ImportError as exc:
        raise BackendUnavailableError(f"backend '{backend.name}' is installed but its library failed to import: "
                                      f"{exc}", {backend.name: [f"import failed: {exc}"]}) from exc
    if choice is None or not choice.knobs:
        return kernel

    def with_knobs(q, k, v, **kwargs):
        with choice.knob_context():
            return kernel(q, k, v, **kwargs)
    return with_knobs


# ----------------------------------------------------------------------------------------------- plans


@dataclasses.dataclass(eq=False, kw_only=True)
class Plan:
    """What runs for one kind of call (made by ``fluxlab.plan``; ``plan(q, k, v)`` runs it): ``backend`` the
    concrete kernel (a group resolved to its member), ``requested`` what was asked for (None: automatic),
    ``warnings`` what the caller must know, ``reasons`` each backend's reasons not to run ``call``."""

    backend: str
    version: str | None
    options: dict
    knobs: tuple
    scale: float
    requested: str | None
    warnings: tuple[str, ...]
    fn: object = dataclasses.field(repr=False)
    reasons: Reasons = dataclasses.field(repr=False)
    _checked: bool = dataclasses.field(default=False, repr=False)  # the first output was checked

    def __getattr__(self, name):  # q_shape, k_shape, v_shape, dtype, device, causal, return_lse, platform
        if name in _CALL_FIELDS:
            return getattr(self.reasons.call, name)
        raise AttributeError(f"'Plan' object has no attribute {name!r}")

    @property
    def call(self) -> Call:
        return self.reasons.call

    def __call__(self, q, k, v, *, check_finite: bool | None = None):
        """Run the bound kernel on inputs of the planned kind; returns ``out`` or ``(out, lse)``. ``check_finite``
        as for ``attention`` (True also checks the scores for overflow: the scale was checked on the plan's inputs)."""
        call = self.call
        if ((q.shape, k.shape, v.shape) != (call.q_shape, call.k_shape, call.v_shape)
                or {q.dtype, k.dtype, v.dtype} != {call.dtype} or {q.device, k.device, v.device} != {call.device}):
            got = ", ".join(f"{n} {_dims(t.shape)} {torch_dtype_name(t.dtype)} on {t.device}"
                            for n, t in (("q", q), ("k", k), ("v", v)))
            raise InvalidInputError(
                f"this plan was made for {call.shapes()} {torch_dtype_name(call.dtype)} on {call.device}; got "
                f"{got}. Make a plan for these inputs (fluxlab.plan(q, k, v, ...)), or cast them to one dtype and "
                "device, e.g. k = k.to(q)")
        if call.return_lse and not call.lse_grad and _lse_grad(q, k, v) \
                and not registry.get_backend(self.backend).caps.lse_grad:
            raise BackendUnavailableError(
                f"this plan runs '{self.backend}', whose log-sum-exp carries no gradient, and these inputs require "
                "grad: a loss that uses the LSE would get a wrong q/k grad. The plan was made for inputs without "
                "grad; make it with the inputs that require grad (fluxlab.plan then picks a backend whose LSE has "
                "a backward, e.g. 'reference'), or detach the inputs / run under torch.no_grad()",
                {self.backend: ["log-sum-exp carries no gradient"]})
        return self._run(q, k, v, check_finite, check_scale=True)

    run = __call__

    def _run(self, q, k, v, check_finite, *, check_scale: bool):
        """Run the kernel; the first output (or one of the wrong kind) is checked against the contract and, unless
        ``check_finite`` is False, for NaN/inf."""
        if _finite_checks_on(check_finite):  # data-dependent, so never part of a cached plan
            _check_finite(q, k, v)
            if check_scale:
                check_scale_fits(q, k, self.scale)
        for warning in self.warnings:
            warnings.warn(warning, FallbackWarning, stacklevel=3)
        call = self.call
        result = self.fn(q, k, v, scale=self.scale, causal=call.causal, return_lse=call.return_lse, **self.options)
        out = result[0] if call.return_lse and isinstance(result, tuple) else result
        if not self._checked or getattr(out, "shape", None) != call.out_shape or out.dtype != q.dtype:
            check_output(result, q, v, return_lse=call.return_lse, backend_name=self.backend)
            if check_finite is not False:
                check_output_finite(out, q, k, v, backend_name=self.backend, scale=self.scale)
            self._checked = True
        return result

    def reasons_for_others(self) -> dict[str, list[str]]:
        """Every other backend with why it was not picked (the plan's reasons, for the planned call)."""
        return {other.name: self.reasons.why_not(other, self.backend, self.requested)
                for other in registry.all_backends() if other.name != self.backend}

    def describe(self) -> str:
        """A few lines a user can read: what runs, where, with what, and any warnings."""
        options = ", ".join(f"{k}={v}" for k, v in self.options.items()) or "defaults"
        knobs = ", ".join(f"{k}={int(v)}" for k, v in self.knobs)
        call = self.call
        lines = [f"runs: {self.backend} {self.version or ''}".rstrip() +
                 f" (requested: {self.requested or 'automatic'}) on {call.platform.describe()}",
                 f"inputs: {call.shapes()} {torch_dtype_name(call.dtype)} on {call.device}",
                 f"scale {self.scale:.6g}, causal={call.causal}, return_lse={call.return_lse}; options: {options}"
                 + (f"; torch knobs: {knobs}" if knobs else "")]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def _lse_grad(q, k, v) -> bool:
    """The LSE's gradient could be needed: grad mode is on and an input requires grad."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def plan(q, k, v, *, backend=None, scale=None, causal=False, return_lse=False, allowed=None, fallback=None,
         heads=None, platform=None) -> Plan:
    """Decide what runs these inputs, without running it: a ``Plan`` (call it with ``q, k, v`` to run). Arguments
    as for ``attention``. Refusals raise with every reason (``BackendUnavailableError``, ``BackendNotAllowedError``,
    ``NoBackendError``); bad inputs raise ``InvalidInputError``."""
    validate_inputs(q, k, v, scale=scale, causal=causal, heads=heads, check_finite=False)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])  # the same double torch computes for scale=None
    check_scale_fits(q, k, float(scale))
    call = Call.of(q, k, v, causal=causal, return_lse=return_lse, lse_grad=bool(return_lse) and _lse_grad(q, k, v),
                   platform=platform, allowed=_canonical_allowed(allowed))
    choice, fallback = _requested(backend, fallback)
    reasons = Reasons(call, (q, k, v))
    picked, options, warning = _select(reasons, choice, fallback)
    concrete = _concrete(picked, reasons)
    reasons.release_inputs()  # the plan is cached: it must not keep the caller's tensors alive
    knobs = choice.knobs if choice is not None and picked.name == choice.name else ()
    return Plan(backend=concrete.name, version=concrete.version, options=options, knobs=knobs, scale=float(scale),
                requested=str(choice) if choice is not None else None, warnings=(warning,) if warning else (),
                fn=_bind(concrete, choice if knobs else None), reasons=reasons)


# ------------------------------------------------------------------------------------------- calling


_plans: dict = {}
_MAX_PLANS = 4096
_is_compiling = torch.compiler.is_compiling  # bound once: the check is on the hot path


def clear_caches() -> None:
    """Forget cached plans (call after installing a kernel package into a running session)."""
    _plans.clear()
    _env_choices.clear()


def attention(q, k, v, *, backend=None, scale=None, causal=False, return_lse=False, allowed=None,
              fallback=None, heads=None, check_finite=None, platform=None):
    """Attention over ``[batch, seq, heads, head_dim]`` tensors; returns ``[batch, seq, heads, head_dim]``.

    ``scale`` defaults to ``head_dim ** -0.5``. With ``return_lse=True`` returns ``(out, lse)``: natural-log
    log-sum-exp, float32, ``[batch, heads, seq]``. ``backend``: a spec such as ``"aiter:how_v3_bf16_cvt=2"`` or
    ``"sdpa:cudnn=0"``; ``allowed``/``fallback``: the set a model allows, opting into another backend; ``heads``:
    the model's query-head count (strengthens the layout check); ``check_finite``: True checks every call's inputs
    for NaN/inf, None (default) each new plan's first output, False nothing. The decision is a cached ``Plan``;
    all of it is described in docs/dispatch.md.
    """
    if _is_compiling():  # dynamo is tracing: give it one opaque op; this dispatcher runs inside it at run time
        return compiled_attention(q, k, v, backend=backend, scale=scale, causal=causal, return_lse=return_lse,
                                  allowed=allowed, fallback=fallback, heads=heads, check_finite=check_finite,
                                  platform=platform)
    if allowed is not None and type(allowed) is not frozenset:
        allowed = frozenset(allowed)
    stack = _SETTINGS.get()
    try:
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, backend,
               scale, causal, return_lse, return_lse and _lse_grad(q, k, v), allowed, fallback, heads, platform,
               stack[-1].key if stack else None, _env_raw(_ENV_BACKEND_KEY, ENV_BACKEND), registry._generation)
        plan_ = _plans.get(key)
    except (AttributeError, TypeError):  # not tensors, or unhashable arguments: the slow path explains
        key = plan_ = None
    first_call = plan_ is None
    if first_call:
        plan_ = plan(q, k, v, backend=backend, scale=scale, causal=causal, return_lse=return_lse, allowed=allowed,
                     fallback=fallback, heads=heads, platform=platform)
        if key is not None:
            if len(_plans) >= _MAX_PLANS:
                _plans.clear()
            _plans[key] = plan_
    return plan_._run(q, k, v, check_finite, check_scale=not first_call)  # a new plan checked the scale


use_dispatcher(attention)  # the fluxlab::attention op (ops.py) runs this dispatcher when a compiled graph calls it


def run_backend(backend, q, k, v, *, scale, causal=False, return_lse=False, platform=None, **options):
    """Call one backend's kernel directly (no selection, no capability checks) and check what it returns against
    the contract: for adapter authors and stand-in contract tests."""
    if isinstance(backend, str):
        backend = registry.get_backend(backend)
    backend = _concrete(backend, Reasons(Call.of(q, k, v, causal=causal, return_lse=return_lse, platform=platform),
                                         (q, k, v)))
    result = backend.kernel()(q, k, v, scale=scale, causal=causal, return_lse=return_lse, **options)
    check_output(result, q, v, return_lse=return_lse, backend_name=backend.name)
    return result


def check_output(result, q, v, *, return_lse: bool, backend_name: str) -> None:
    """Raise BackendOutputError where ``result`` breaks the contract (shape, dtype, device, the LSE's form)."""
    if return_lse and not (isinstance(result, tuple) and len(result) == 2):
        raise BackendOutputError(f"backend '{backend_name}' was asked for (out, lse) but returned "
                                 f"{type(result).__name__}")
    out, lse = result if return_lse else (result, None)
    if not isinstance(out, torch.Tensor):
        raise BackendOutputError(f"backend '{backend_name}' returned {type(out).__name__}, not a tensor")
    expected, lse_shape = (*q.shape[:3], v.shape[3]), (q.shape[0], q.shape[2], q.shape[1])
    broken = [(tuple(out.shape) != expected, f"returned shape {tuple(out.shape)}; the contract is "
                                             f"[batch, seq, heads, head_dim] = {expected}"),
              (out.dtype != q.dtype, f"returned dtype {out.dtype} for {q.dtype} inputs"),
              (out.device != q.device, f"returned its output on {out.device} for inputs on {q.device}; the contract "
                                       "is the inputs' device")]
    if lse is not None:
        broken.append((tuple(lse.shape) != lse_shape or lse.dtype != torch.float32, f"returned lse "
                       f"{tuple(lse.shape)} {lse.dtype}; the contract is float32 [batch, heads, seq] = {lse_shape}"))
    for refused, message in broken:
        if refused:
            raise BackendOutputError(f"backend '{backend_name}' {message}")


def flux_reasons(platform: Platform | None = None) -> Reasons:
    """Every backend's reasons not to run FLUX-shaped inputs (bf16, else fp16) on ``platform`` (default: here)."""
    platform = platform or current_platform()
    q = torch.empty(1, 4608, 24, 128, dtype=torch.bfloat16 if platform.bf16 else torch.float16, device="meta")
    return Reasons(Call.of(q, q, q, platform=platform))


def check_output_finite(out, q, k, v, *, backend_name: str, scale: float) -> None:
    """Refuse a plan's first output with NaN/inf, naming NaN/inf inputs or overflowing scores as the cause
    (``InvalidInputError``), else the backend (``BackendOutputError``)."""
    if out.device.type == "meta" or _is_compiling() or bool(torch.isfinite(out).all()):
        return
    _check_finite(q, k, v)  # NaN in: say so, with where to look
    check_scale_fits(q, k, scale)  # inputs larger than those the plan was made with
    bad = int((~torch.isfinite(out)).sum())
    raise BackendOutputError(f"backend '{backend_name}' returned {bad} NaN/inf values of {out.numel()} for finite "
                             "inputs; choose another backend, or fix this one (compare it with "
                             "fluxlab.compare_attention)")


def default_backend(q=None, *, platform: Platform | None = None) -> str | None:
    """The backend automatic choice picks on this machine for FLUX-shaped bf16 inputs (or ``q``'s kind)."""
    platform = platform or current_platform()
    reasons = flux_reasons(platform) if q is None else Reasons(Call.of(q, q, q, platform=platform))
    backend = reasons.automatic()
    return backend.name if backend else None
