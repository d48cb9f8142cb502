"""``fluxlab.attach`` / ``detach`` / ``set_backend`` / ``set_schedule``: route a live FLUX.2 model's attention.

Per call, the backend is: the schedule's answer > the model's ``set_backend`` > diffusers' ``attention_backend()``
context > ``fluxlab.use_backend`` > ``$FLUXLAB_ATTENTION_BACKEND`` > the platform's priority list, within the model's
allowed set. How routes, hooks, the guard and step tracking work: docs/flux2_internals.md.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import threading
import warnings
import weakref
from collections.abc import Iterable

import torch

from .. import registry
from ..backends import BUILTIN_BACKENDS, BUILTIN_GROUPS
from ..dispatch import BackendChoice, attention
from ..errors import (AttachError, BackendNotAllowedError, InvalidSizeError, PipelineBusyError,
                      UnsupportedAttentionCallError)
from . import interop, router
from .limits import required_multiple, side_problem
from .schedule import Schedule

# The built-in backends and groups a FLUX.2 model may use: every one whose adapter does not declare ``flux2=False``
# (docs/flux2_internals.md, "The allowed set").
FLUX2_BACKENDS: frozenset[str] = frozenset(
    [b.name for b in BUILTIN_BACKENDS if b.flux2] + [g.name for g in BUILTIN_GROUPS])
_flux2_cached: list = [None, None]  # [registry generation, set]

# transformer -> its AttachedModel. Weak keys: a model dropped by the user is not kept alive by fluxlab.
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GUARDED: dict[type, type] = {}  # a pipeline class -> its guarded subclass (same name)
_LOCK = "_fluxlab_generation_lock"
_UNPOSITIONED = object()
_CLASS_DEFAULT = object()  # the processor had no _attention_backend of its own (its class's None applied)

# Where a transformer forward sits in the denoising loop (all None outside a pipeline's loop); branch: "cond" or
# "uncond" under Klein's true CFG.
Position = collections.namedtuple("Position", "step num_steps branch text_tokens", defaults=(None,) * 4)


def flux2_backends() -> frozenset[str]:
    """Every backend and group registered now that a FLUX.2 model may use: the default allowed set."""
    if _flux2_cached[0] != registry.generation():
        names = [b.name for b in registry.all_backends() if b.flux2] + [g.name for g in registry.all_groups()]
        _flux2_cached[:] = [registry.generation(), frozenset(names)]
    return _flux2_cached[1]


def resolve_allowed(allowed: Iterable[str] | None) -> frozenset[str] | None:
    """The canonical backend names a model allows (None stays None: ``flux2_backends()`` when it runs)."""
    if allowed is None:
        return None
    names = frozenset(registry.canonical_name(name) for name in ([allowed] if isinstance(allowed, str) else allowed))
    if not names:
        raise ValueError("allowed= is empty: a FLUX.2 model needs at least one attention backend, e.g. "
                         "allowed={'sdpa'} or FLUX2_BACKENDS")
    return names


def _flux2_classes():
    from diffusers.models.transformers import transformer_flux2 as tf2

    return tf2.Flux2Transformer2DModel, (tf2.Flux2Attention, tf2.Flux2ParallelSelfAttention)


def _unwrapped(obj):
    """The module inside a ``torch.compile(module)`` wrapper (OptimizedModule keeps it as ``_orig_mod``)."""
    inner = getattr(obj, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else obj


def split_target(obj):
    """``(transformer, pipeline or None)`` for a FLUX.2 pipeline or its transformer (compiled or not)."""
    transformer_cls, _ = _flux2_classes()
    if isinstance(_unwrapped(obj), transformer_cls):
        return _unwrapped(obj), None
    inner = getattr(obj, "transformer", None)
    if isinstance(_unwrapped(inner), transformer_cls):
        return _unwrapped(inner), obj
    held = f" (its .transformer is a {type(inner).__name__})" if inner is not None else ""
    raise TypeError(f"expected a FLUX.2 pipeline (diffusers.Flux2Pipeline, Flux2KleinPipeline, Flux2KleinKVPipeline, "
                    f"...) or its Flux2Transformer2DModel (torch.compile'd or not), got {type(obj).__name__}{held}")


def check_allowed(name, allowed: frozenset[str] | None) -> BackendChoice | None:
    """Parse a backend choice and refuse it, now, if the model does not allow it (None: FLUX.2's default set)."""
    if name is None:
        return None
    choice = BackendChoice.parse(name)  # unknown names and options raise here, with a suggestion
    allowed = flux2_backends() if allowed is None else allowed
    if choice.name not in allowed:
        raise BackendNotAllowedError(
            f"backend '{choice.name}' is outside this FLUX.2 model's allowed set ({', '.join(sorted(allowed))}); "
            "fluxlab refuses rather than substitute another kernel. Widen the set: "
            f"fluxlab.attach(pipe, allowed=fluxlab.models.FLUX2_BACKENDS | {{'{choice.name}'}}).",
            {choice.name: ["outside the model's allowed set"]})
    return choice


class AttachedModel:
    """fluxlab's state for one attached transformer: allowed set, backend, schedule, capture, loop position."""

    def __init__(self, transformer, pipe, allowed: frozenset[str] | None, backend: BackendChoice | None):
        self._transformer = weakref.ref(transformer)
        self._pipe = weakref.ref(pipe) if pipe is not None else None
        self.chosen_allowed = allowed  # the user's set; None: every backend FLUX.2 may use, registered ones included
        self.backend = backend
        self.schedule = None
        self.capture = None  # the active fluxlab.capture, if any
        self.position = Position()  # of the transformer forward now running
        self._step_key, self._forwards_in_step = None, 0
        self._parsed: dict[str, BackendChoice] = {}  # schedule answers, parsed once
        self._handles: list = []
        self.calls_in_layer = 0  # attention calls in the running module (the KV extract step makes two)
        self._last_layer = _UNPOSITIONED  # layer of the previous call; None: a forward hook just positioned us
        _, attention_classes = _flux2_classes()
        self.layer_names = [name for name, module in transformer.named_modules()
                            if isinstance(module, attention_classes)]
        # Each module's head count, passed as heads= so a [B, H, S, D] tensor is refused even at short sequences.
        self.heads = {name: getattr(transformer.get_submodule(name), "heads", None) for name in self.layer_names}
        self.serial = router.register_model(self)
        parameter = next(transformer.parameters(), None)
        on_meta = parameter is None or parameter.device.type == "meta"
        self.token_device = torch.device("cpu") if on_meta else parameter.device  # where the routes' tokens are
        self.routes = {name: router.Route(self, name, self.serial, index, self.token_device)
                       for index, name in enumerate(self.layer_names)}
        self._restore: dict[str, tuple] = {}  # layer -> (processor, its own _attention_backend before fluxlab)
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        self._diffusers = _AttentionBackendRegistry
        self.active_seen = None  # diffusers' process-wide backend when last looked at (interop.py)
        self.active_at_attach = None  # ... and when attaching (its warning said fluxlab's choice runs instead)
        self.context_choice: BackendChoice | None = None  # diffusers' attention_backend() context, mapped
        self.active_warned: set[str] = set()  # diffusers names refused once already
        self.setter_warned = False  # diffusers' set_attention_backend mapping announced once per model

    @property
    def allowed(self) -> frozenset[str]:
        """The backends this model may use now."""
        return self.chosen_allowed if self.chosen_allowed is not None else flux2_backends()

    @allowed.setter
    def allowed(self, names) -> None:
        self.chosen_allowed = resolve_allowed(names)

    @property
    def transformer(self):
        return self._transformer()

    @property
    def pipe(self):
        return self._pipe() if self._pipe is not None else None

    def set_backend(self, name) -> None:
        """This model's backend from the next call on (None: ``use_backend`` / automatic); refused if not allowed."""
        self.backend = check_allowed(name, self.allowed)

    # -- routes and hooks ----------------------------------------------------------------------------------------

    def install(self) -> None:
        transformer = self.transformer
        self._handles.append(transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        self._modules = {name: transformer.get_submodule(name) for name in self.layer_names}
        self._unrouted: dict[str, object] = {}  # layer -> a plainly assigned processor fluxlab cannot route
        for name, module in self._modules.items():
            self._route(name, module)
            # Processors swapped later (Flux2KleinKVPipeline does it in __init__) get the layer's route too.
            module.set_processor = functools.partial(self._set_processor, name, module)
        interop.install_setters(self)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        interop.remove_setters(self)
        for name in self.layer_names:
            module = self.transformer.get_submodule(name)
            module.__dict__.pop("set_processor", None)
            processor = module.processor
            if processor.__dict__.get("_attention_backend") is self.routes[name]:
                own = self._restore[name][1]
                if own is _CLASS_DEFAULT:
                    del processor._attention_backend
                else:
                    processor._attention_backend = own
        self._restore.clear()
        router.unregister_model(self.serial)

    def _route(self, name: str, module) -> None:
        """Put this layer's Route in the module's processor (a processor shared by layers is copied first)."""
        processor = module.processor
        if not hasattr(processor, "_attention_backend"):
            raise AttachError(f"{name}'s processor {type(processor).__name__} has no _attention_backend, so it does "
                              "not pass diffusers' FLUX.2 routing information; fluxlab routes diffusers' FLUX.2 "
                              "processors (and subclasses of them)")
        own = processor.__dict__.get("_attention_backend", _CLASS_DEFAULT)
        if type(own) is router.Route:
            if own is self.routes[name]:
                return
            # Another layer's (or model's) route: one processor object serves several layers. diffusers' FLUX.2
            # processors keep no per-call state, so this layer gets its own copy and its own route.
            own = own.model._restore[own.layer][1]
            processor = copy.copy(processor)
            type(module).set_processor(module, processor)
        self._restore[name] = (processor, own)
        processor._attention_backend = self.routes[name]

    def _set_processor(self, name: str, module, processor) -> None:
        type(module).set_processor(module, processor)  # diffusers' own
        self._route(name, module)

    def _on_forward(self, module, args, kwargs):
        if torch.compiler.is_compiling():
            return  # the whole transformer is compiled: run_attention locates the forward at its first call
        self._check_processors()
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        self.position = self._locate(context.shape[1] if context is not None else None)
        self._last_layer = None
        latents = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(latents, torch.Tensor) and latents.device != self.token_device:
            self.place_tokens(latents.device)  # moved or offloaded: compiled calls find their tokens beside them

    def _locate(self, text_tokens: int | None) -> Position:
        """The running forward's place in the pipeline's loop, read from the pipeline and its scheduler."""
        pipe = self.pipe
        timestep = getattr(pipe, "_current_timestep", None) if pipe is not None else None
        if timestep is None:  # a bare transformer call, or a pipeline outside its loop
            self._step_key = None
            return Position(text_tokens=text_tokens)
        scheduler = pipe.scheduler
        index = getattr(scheduler, "step_index", None)  # None until the first scheduler.step()
        step = 0 if index is None else index - (getattr(scheduler, "begin_index", None) or 0)
        branch = None
        if getattr(pipe, "do_classifier_free_guidance", False):
            # Klein's true CFG: two forwards per step, conditional first. The loop's timestep is a fresh tensor
            # per step: (its id, step) keys the step; ids can repeat across calls, so the order is taken modulo 2.
            key = (id(timestep), step)
            self._forwards_in_step = self._forwards_in_step + 1 if key == self._step_key else 0
            self._step_key = key
            branch = ("cond", "uncond")[self._forwards_in_step % 2]
        return Position(step, getattr(pipe, "_num_timesteps", None), branch, text_tokens)

    def place_tokens(self, device) -> None:
        for route in self.routes.values():
            route.place(device)
        self.token_device = device

    def _check_processors(self) -> None:
        """Find processors assigned plainly (``attn.processor = p``: only ``set_processor`` is shadowed) since the
        last forward; route them as ``set_processor`` would, or say that fluxlab no longer handles the layer."""
        moved = [name for name, module in self._modules.items()
                 if getattr(module.processor, "_attention_backend", None) is not self.routes[name]
                 and module.processor is not self._unrouted.get(name)]
        if not moved:
            return
        routed, unroutable, kinds, had = [], [], set(), set()
        for name in moved:
            processor = self._modules[name].processor
            kinds.add(type(processor).__name__)
            if hasattr(processor, "_attention_backend"):
                own = processor.__dict__.get("_attention_backend")
                if own is not None and type(own) is not router.Route:
                    had.add(getattr(own, "value", own))
                self._route(name, self._modules[name])
                routed.append(name)
            else:
                self._unrouted[name] = processor
                unroutable.append(name)
        assigned = f"attn.processor = {'/'.join(sorted(kinds))}(...)"
        if routed:
            dropped = (f" The diffusers backend it carried ({', '.join(sorted(had))}) is not used while attached."
                       if had else "")
            warnings.warn(f"{_names(routed)}: processor assigned directly ({assigned}) on a fluxlab-attached FLUX.2 "
                          "model; fluxlab routes it as attn.set_processor(...) would, so fluxlab's backend, schedule "
                          f"and capture apply to it.{dropped} Use set_processor to swap processors without this "
                          "warning.", interop.DiffusersBackendWarning, stacklevel=2)
        if unroutable:
            warnings.warn(f"{_names(unroutable)}: processor assigned directly ({assigned}) on a fluxlab-attached "
                          "FLUX.2 model, and it has no _attention_backend (not a diffusers FLUX.2 processor), so "
                          "fluxlab no longer handles that attention: it runs the processor's own code. To keep "
                          "fluxlab routing it, assign a diffusers FLUX.2 processor with attn.set_processor(...).",
                          interop.DiffusersBackendWarning, stacklevel=2)

    # -- per call ------------------------------------------------------------------------------------------------

    def backend_for(self, layer: str) -> BackendChoice | None:
        if self.schedule is not None:
            answer = self.schedule(layer, self.position.step, self.position.num_steps)
            if answer is not None:
                if answer not in self._parsed:
                    self._parsed[answer] = BackendChoice.parse(answer)
                return self._parsed[answer]
        # The model's own backend beats diffusers' attention_backend() context, as set_attention_backend does there.
        return self.backend if self.backend is not None else self.context_choice

    def run_attention(self, layer: str, q, k, v, *, scale, causal=False):
        """One attention call of ``layer`` (eagerly from the router, or from inside the compiled graph's op)."""
        if layer != self._last_layer:
            if self._last_layer is not None and layer == self.layer_names[0]:
                # A forward no eager hook announced (whole-model compile): locate it in the loop now. The text
                # length is only known to the hook, so records of such forwards have text_tokens=None.
                self.position = self._locate(None)
            self.calls_in_layer = 0
            self._last_layer = layer
        self.calls_in_layer += 1
        if self._diffusers._active_backend is not self.active_seen:
            interop.note_active_change(self, self._diffusers._active_backend)
        backend = self.backend_for(layer)
        heads = self.heads.get(layer)
        if self.capture is not None and self.capture.selects(layer, self.position):
            return self.capture.record(self, layer, q, k, v, scale=scale, causal=causal, backend=backend, heads=heads)
        return attention(q, k, v, backend=backend, scale=scale, causal=causal, allowed=self.allowed, heads=heads)

    def __repr__(self):
        schedule = f", schedule={self.schedule!r}" if self.schedule is not None else ""
        return (f"AttachedModel(backend={str(self.backend) if self.backend else 'automatic'}, "
                f"allowed={sorted(self.allowed)}, layers={len(self.layer_names)}{schedule})")


def _names(layers: list[str], shown: int = 4) -> str:
    more = f" and {len(layers) - shown} more" if len(layers) > shown else ""
    return ", ".join(layers[:shown]) + more


# -- the pipeline's call, guarded: one generation at a time, sizes diffusers would shrink refused -------------------


def _guarded_class(cls: type) -> type:
    if getattr(cls, "_fluxlab_unguarded", None) is not None:
        return cls
    if cls not in _GUARDED:
        signature = inspect.signature(cls.__call__)

        def __call__(self, *args, **kwargs):
            lock = self.__dict__.get(_LOCK)
            if lock is None or not lock.acquire(blocking=False):
                raise PipelineBusyError(
                    "this pipeline is already generating (in another thread, or a callback called it again): a "
                    "pipeline serves one generation at a time. Wait for it, or load a second pipeline for the "
                    "other thread")
            try:
                arguments = signature.bind_partial(self, *args, **kwargs).arguments
                for side in ("height", "width"):
                    if arguments.get(side) is not None:
                        problem = side_problem(arguments[side], side, required_multiple(self), force=True)
                        if problem:
                            raise InvalidSizeError(problem)
                return cls.__call__(self, *args, **kwargs)
            finally:
                lock.release()

        __call__.__doc__ = cls.__call__.__doc__
        _GUARDED[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                    "__qualname__": cls.__qualname__, "_fluxlab_unguarded": cls})
    return _GUARDED[cls]


# -- the public functions ------------------------------------------------------------------------------------------


def state_of(obj) -> AttachedModel:
    """The attached state of a pipeline or transformer; raises AttachError if fluxlab is not attached."""
    transformer, pipe = split_target(obj)
    state = _ATTACHED.get(transformer)
    if state is None:
        raise AttachError("fluxlab is not attached to this FLUX.2 model; call fluxlab.attach(pipe) first "
                          "(fluxlab.load_flux2 returns pipelines already attached)")
    if pipe is not None and state.pipe is None:
        state._pipe = weakref.ref(pipe)  # attached through the bare transformer: now steps can be read
    return state


def is_attached(obj) -> bool:
    return split_target(obj)[0] in _ATTACHED


def attach(pipe_or_transformer, backend=None, allowed=None):
    """Route every FLUX.2 attention call of this pipeline (or transformer) through ``fluxlab.attention``.

    ``backend``: this model's backend (None: ``fluxlab.use_backend`` / automatic). ``allowed``: the backends the
    model may use (None: every backend that can serve FLUX.2, registered ones included); a backend outside it raises
    ``BackendNotAllowedError`` here. The transformer may be compiled, before or after attaching; a diffusers backend
    it had is named in a ``DiffusersBackendWarning`` and comes back at ``detach``. Returns its argument.
    """
    transformer, pipe = split_target(pipe_or_transformer)
    if transformer in _ATTACHED:
        raise AttachError("fluxlab is already attached to this FLUX.2 model; call fluxlab.detach(pipe) first, or "
                          "use fluxlab.set_backend(pipe, name) to switch backends")
    allowed = resolve_allowed(allowed)
    choice = check_allowed(backend, allowed)
    _, attention_classes = _flux2_classes()
    for name, module in transformer.named_modules():
        if isinstance(module, attention_classes) and getattr(module.processor, "_parallel_config", None) is not None:
            raise UnsupportedAttentionCallError(
                f"{name} runs context parallel (transformer.enable_parallelism): its calls need diffusers' "
                "Ulysses/ring exchange, which fluxlab's single-device kernels do not do. Run context-parallel "
                "models without fluxlab attached.")
    state = AttachedModel(transformer, pipe, allowed, choice)
    interop.warn_at_attach(state)  # before the routes replace what diffusers had set
    router.acquire()
    try:
        state.install()
    except BaseException:
        state.remove()
        router.release()
        raise
    # If the user drops the model without detaching, its share of the router is released with it.
    state.finalizer = weakref.finalize(transformer, router.release)
    _ATTACHED[transformer] = state
    if pipe is not None:  # guard the pipeline's call until detach
        pipe.__dict__[_LOCK] = threading.Lock()
        pipe.__class__ = _guarded_class(type(pipe))
    return pipe_or_transformer


def detach(pipe_or_transformer):
    """Undo ``attach``: remove fluxlab's routes and hooks, put diffusers' settings back; with no model left attached,
    diffusers' function comes back."""
    transformer, _ = split_target(pipe_or_transformer)
    state = _ATTACHED.get(transformer)
    if state is None:
        raise AttachError("fluxlab is not attached to this FLUX.2 model, so there is nothing to detach")
    if state.capture is not None:
        raise AttachError("a fluxlab.capture is still recording this model; leave its `with` block before "
                          "detaching")
    state.remove()
    del _ATTACHED[transformer]
    state.finalizer.detach()
    router.release()
    pipe = state.pipe
    if pipe is not None:
        pipe.__class__ = getattr(type(pipe), "_fluxlab_unguarded", type(pipe))
        pipe.__dict__.pop(_LOCK, None)
    return pipe_or_transformer


def set_backend(pipe_or_transformer, name) -> None:
    """This model's backend from the next call on (no reload); None: back to ``use_backend`` / automatic."""
    state_of(pipe_or_transformer).set_backend(name)


def check_schedule(schedule: Schedule, state: AttachedModel, *, what: str = "schedule", error=ValueError) -> None:
    """Every backend of ``schedule`` allowed on this model, and every layer pattern matching one of its layers;
    an unmatched pattern raises ``error`` naming ``what`` and the model's layers."""
    for name in schedule.backend_names():
        check_allowed(name, state.allowed)
    unmatched = schedule.unmatched_patterns(state.layer_names)
    if unmatched:
        raise error(f"{what} layer patterns {unmatched} match no attention layer of this model; "
                    f"its layers: {', '.join(state.layer_names)}")


def set_schedule(pipe_or_transformer, schedule) -> None:
    """A per-layer / per-step override: a :class:`Schedule` (checked now against the allowed set and the model's
    layers) or ``fn(layer, step, num_steps) -> name or None`` (checked at each call). ``None`` removes it."""
    state = state_of(pipe_or_transformer)
    if isinstance(schedule, Schedule):
        check_schedule(schedule, state)
    elif schedule is not None and not callable(schedule):
        raise TypeError(f"set_schedule takes a fluxlab.Schedule or a function (layer, step, num_steps) -> backend "
                        f"name or None; got {type(schedule).__name__}")
    state.schedule = schedule
    state._parsed.clear()
