"""``fluxlab.attach`` / ``detach`` / ``set_backend`` / ``set_schedule``: route a live FLUX.2 model's attention.

Attaching adds forward hooks (nothing else) to the transformer and to each of its attention modules and joins
the router (``router.py``); detaching removes them, so the model behaves exactly as before. Hooks sit on the
modules, not on the processors, so they survive ``Flux2KleinKVPipeline`` swapping in its KV processors.
Per call, the backend is: the schedule's answer > the model's ``set_backend`` > ``fluxlab.use_backend`` >
``$FLUXLAB_ATTENTION_BACKEND`` > the platform's priority list — always within the model's allowed set; while
attached, diffusers' own ``set_attention_backend`` choice is not used. Masks, dropout and context-parallel calls
are refused with an error (router.py), never run wrongly. Not routed: the VAE's and the text encoders' attention
(they are not FLUX.2 transformer attention). One generation at a time per model (the loop position is per model).
"""

from __future__ import annotations

import math
import weakref

from ..dispatch import BackendChoice, attention
from ..errors import BackendNotAllowedError
from . import router
from .errors import AttachError, UnsupportedAttentionCallError
from .schedule import Schedule
from .steps import OUTSIDE_LOOP, StepTracker
from .supported import resolve_allowed

# transformer -> its AttachedModel. Weak keys: a model dropped by the user is not kept alive by fluxlab.
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flux2_classes():
    from diffusers.models.transformers import transformer_flux2 as tf2

    return tf2.Flux2Transformer2DModel, (tf2.Flux2Attention, tf2.Flux2ParallelSelfAttention)


def split_target(obj):
    """``(transformer, pipeline or None)`` for a FLUX.2 pipeline or its ``Flux2Transformer2DModel``."""
    transformer_cls, _ = _flux2_classes()
    if isinstance(obj, transformer_cls):
        return obj, None
    transformer = getattr(obj, "transformer", None)
    if isinstance(transformer, transformer_cls):
        return transformer, obj
    raise TypeError(f"expected a FLUX.2 pipeline (diffusers.Flux2Pipeline, Flux2KleinPipeline, Flux2KleinKVPipeline, "
                    f"...) or its Flux2Transformer2DModel, got {type(obj).__name__}")


def check_allowed(name, allowed: frozenset[str]) -> BackendChoice | None:
    """Parse a backend choice and refuse it, now, if the model does not allow it."""
    if name is None:
        return None
    choice = BackendChoice.parse(name)  # unknown names and options raise here, with a suggestion
    if choice.name not in allowed:
        raise BackendNotAllowedError(
            f"backend '{choice.name}' is outside this FLUX.2 model's allowed set ({', '.join(sorted(allowed))}); "
            "fluxlab refuses rather than substitute another kernel. Widen the set: "
            f"fluxlab.attach(pipe, allowed=fluxlab.FLUX2_BACKENDS | {{'{choice.name}'}}).",
            {choice.name: ["outside the model's allowed set"]})
    return choice


class AttachedModel:
    """fluxlab's state for one attached transformer: allowed set, backend, schedule, capture, loop position."""

    def __init__(self, transformer, pipe, allowed: frozenset[str], backend: BackendChoice | None):
        self._transformer = weakref.ref(transformer)
        self._pipe = weakref.ref(pipe) if pipe is not None else None
        self.allowed = allowed
        self.backend = backend
        self.schedule = None
        self.capture = None  # the active fluxlab.capture, if any
        self.position = OUTSIDE_LOOP  # of the transformer forward now running
        self._tracker = StepTracker()
        self._parsed: dict[str, BackendChoice] = {}  # schedule answers, parsed once
        self._tokens: list = []
        self._handles: list = []
        self.calls_in_layer = 0  # attention calls in the running module (the KV extract step makes two)
        _, attention_classes = _flux2_classes()
        self.layer_names = [name for name, module in transformer.named_modules()
                            if isinstance(module, attention_classes)]

    @property
    def transformer(self):
        return self._transformer()

    @property
    def pipe(self):
        return self._pipe() if self._pipe is not None else None

    def set_pipe(self, pipe) -> None:
        self._pipe = weakref.ref(pipe)

    # -- hooks ---------------------------------------------------------------------------------------------------

    def install_hooks(self) -> None:
        transformer = self.transformer
        _, attention_classes = _flux2_classes()
        self._handles.append(transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        for name, module in transformer.named_modules():
            if isinstance(module, attention_classes):
                self._handles.append(module.register_forward_pre_hook(self._enter_hook(name)))
                # always_call: the context variable is reset even when the attention raises.
                self._handles.append(module.register_forward_hook(self._leave, always_call=True))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_forward(self, module, args, kwargs):
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        text_tokens = context.shape[1] if context is not None else None
        self.position = self._tracker.position(self.pipe, text_tokens)

    def _enter_hook(self, name):
        def enter(module, args):
            self.calls_in_layer = 0
            self._tokens.append(router.CURRENT_CALL.set((self, name)))
        return enter

    def _leave(self, module, args, output):
        router.CURRENT_CALL.reset(self._tokens.pop())

    # -- per call ------------------------------------------------------------------------------------------------

    def backend_for(self, layer: str) -> BackendChoice | None:
        if self.schedule is not None:
            answer = self.schedule(layer, self.position.step, self.position.num_steps)
            if answer is not None:
                if answer not in self._parsed:
                    self._parsed[answer] = BackendChoice.parse(answer)
                return self._parsed[answer]
        return self.backend

    def run_attention(self, layer: str, q, k, v, *, scale=None, causal=False):
        if scale is None:
            # The number torch's SDPA computes for scale=None, passed explicitly: keeps `sdpa` bit-identical to
            # diffusers' `native` (head_dim ** -0.5 can differ from 1/sqrt(head_dim) in the last bit).
            scale = 1.0 / math.sqrt(q.shape[-1])
        backend = self.backend_for(layer)
        self.calls_in_layer += 1
        capture = self.capture
        if capture is not None and capture.selects(layer, self.position):
            return capture.record(self, layer, q, k, v, scale=scale, causal=causal, backend=backend)
        return attention(q, k, v, backend=backend, scale=scale, causal=causal, allowed=self.allowed)

    def __repr__(self):
        schedule = f", schedule={self.schedule!r}" if self.schedule is not None else ""
        return (f"AttachedModel(backend={str(self.backend) if self.backend else 'automatic'}, "
                f"allowed={sorted(self.allowed)}, layers={len(self.layer_names)}{schedule})")


def state_of(obj) -> AttachedModel:
    """The attached state of a pipeline or transformer; raises AttachError if fluxlab is not attached."""
    transformer, pipe = split_target(obj)
    state = _ATTACHED.get(transformer)
    if state is None:
        raise AttachError("fluxlab is not attached to this FLUX.2 model; call fluxlab.attach(pipe) first "
                          "(fluxlab.load_flux2 returns pipelines already attached)")
    if pipe is not None and state.pipe is not pipe and state.pipe is None:
        state.set_pipe(pipe)  # attached through the bare transformer: now the pipeline is known, steps can be read
    return state


def is_attached(obj) -> bool:
    transformer, _ = split_target(obj)
    return transformer in _ATTACHED


def attach(pipe_or_transformer, backend=None, allowed=None):
    """Route every FLUX.2 attention call of this pipeline (or transformer) through ``fluxlab.attention``.

    ``backend``: this model's backend (None: ``fluxlab.use_backend`` / automatic). ``allowed``: the backends the
    model may use (None: ``fluxlab.FLUX2_BACKENDS``; widen with ``FLUX2_BACKENDS | {"my_kernel"}``). A backend
    outside the set raises ``BackendNotAllowedError`` here, not during generation. Returns its argument.
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
    router.acquire()
    try:
        state.install_hooks()
    except BaseException:
        state.remove_hooks()
        router.release()
        raise
    # If the user drops the model without detaching, its share of the router is released with it.
    state.finalizer = weakref.finalize(transformer, router.release)
    _ATTACHED[transformer] = state
    return pipe_or_transformer


def detach(pipe_or_transformer):
    """Undo ``attach``: remove fluxlab's hooks; with no model left attached, diffusers' function comes back."""
    transformer, _ = split_target(pipe_or_transformer)
    state = _ATTACHED.get(transformer)
    if state is None:
        raise AttachError("fluxlab is not attached to this FLUX.2 model, so there is nothing to detach")
    if state.capture is not None:
        raise AttachError("a fluxlab.capture is still recording this model; leave its `with` block before "
                          "detaching")
    state.remove_hooks()
    del _ATTACHED[transformer]
    state.finalizer.detach()
    router.release()
    return pipe_or_transformer


def set_backend(pipe_or_transformer, name) -> None:
    """This model's backend from the next call on (no reload); None: back to ``use_backend`` / automatic."""
    state = state_of(pipe_or_transformer)
    state.backend = check_allowed(name, state.allowed)


def set_schedule(pipe_or_transformer, schedule) -> None:
    """A per-layer / per-step override: a :class:`Schedule` or ``fn(layer, step, num_steps) -> name or None``.

    A ``Schedule``'s backends are checked against the allowed set now, and its layer patterns against the model's
    layer names; a function's answers are checked by the dispatcher at each call. ``None`` removes the schedule.
    """
    state = state_of(pipe_or_transformer)
    if schedule is None:
        state.schedule = None
        return
    if isinstance(schedule, Schedule):
        for name in schedule.backend_names():
            check_allowed(name, state.allowed)
        unmatched = schedule.unmatched_patterns(state.layer_names)
        if unmatched:
            raise ValueError(f"schedule layer patterns {unmatched} match no attention layer of this model; "
                             f"its layers: {', '.join(state.layer_names)}")
    elif not callable(schedule):
        raise TypeError(f"set_schedule takes a fluxlab.Schedule or a function (layer, step, num_steps) -> backend "
                        f"name or None; got {type(schedule).__name__}")
    state.schedule = schedule
    state._parsed.clear()
