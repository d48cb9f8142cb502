"""diffusers' own attention settings next to fluxlab's: names mapped, hub kernels refused, nothing silently ignored.

While attached, diffusers' setters and its ``attention_backend()`` context work through fluxlab with the fluxlab
backend of the same kernel family; what cannot apply is refused with the reason (docs/guide.md "diffusers and
fluxlab: who decides").
"""

from __future__ import annotations

import functools
import warnings

from ..backends import BUILTIN_BACKENDS
from ..dispatch import BackendChoice
from ..errors import DiffusersBackendWarning, UnknownBackendError
from ..registry import HUB_KERNELS, NO_EQUIVALENT, refusal  # noqa: F401  (names kept here for callers)

DIFFUSERS_DEFAULT = "native"
# diffusers 0.42 backend name -> the fluxlab backend of the same kernel family (each adapter's ``diffusers=``).
SAME_KERNEL: dict[str, str] = {name: b.name for b in BUILTIN_BACKENDS for name in b.diffusers}
_SETTERS = ("set_attention_backend", "reset_attention_backend")


def _name(backend) -> str:
    return str(getattr(backend, "value", backend)).strip().lower()  # AttentionBackendName members are str enums


def fluxlab_name(name) -> str:
    """The fluxlab backend of the same kernel family as diffusers' backend ``name``; refused names raise."""
    key = _name(name)
    if key in SAME_KERNEL:
        return SAME_KERNEL[key]
    raise UnknownBackendError(refusal(key) or f"'{key}' is not a diffusers 0.42 attention backend name")


def _runs_instead(state) -> str:
    if state.schedule is not None:
        return "its schedule's backends"
    if state.backend is not None:
        return f"'{state.backend}'"
    return "its automatic choice (fluxlab.use_backend, $FLUXLAB_ATTENTION_BACKEND, else this machine's priority list)"


def _equivalent(name: str) -> str:
    if name in SAME_KERNEL:
        return f"fluxlab's name for that kernel is '{SAME_KERNEL[name]}'"
    return refusal(name) or "fluxlab has no backend of that name"


def warn_at_attach(state) -> None:
    """Name every diffusers setting other than the default that attaching overrides, and what fluxlab runs instead."""
    active = _name(state._diffusers._active_backend)
    settings: dict[str, list[str]] = {}  # diffusers backend name -> the layers whose processors would run it
    for layer in state.layer_names:
        explicit = getattr(state.transformer.get_submodule(layer).processor, "_attention_backend", None)
        chosen = _name(explicit) if explicit is not None else active
        if chosen != DIFFUSERS_DEFAULT:
            settings.setdefault(chosen, []).append(layer)
    for name, layers in settings.items():
        where = "all its attention layers" if len(layers) == len(state.layer_names) else ", ".join(layers)
        keep = f" To keep it, attach with backend='{SAME_KERNEL[name]}'." if name in SAME_KERNEL else ""
        warnings.warn(
            f"fluxlab.attach: diffusers' attention backend '{name}' (set on {where} or process-wide) is not used "
            f"while fluxlab is attached; fluxlab runs {_runs_instead(state)} instead. {_equivalent(name)}.{keep} "
            "fluxlab.detach puts diffusers' setting back.", DiffusersBackendWarning, stacklevel=3)
    state.active_seen = state.active_at_attach = state._diffusers._active_backend


def note_active_change(state, active) -> None:
    """Called when diffusers' process-wide backend changed while attached (``attention_backend()``, a setter on
    another model): from now on it applies to this model, mapped, where the model has no backend of its own
    (``state.context_choice``); a name that cannot apply is refused once per name, with the reason."""
    state.active_seen = active
    state.context_choice = None
    name = _name(active)
    if active == state.active_at_attach:
        return  # back to what attaching found (and warned about): fluxlab's own choice runs
    mapped = SAME_KERNEL.get(name)
    if mapped is not None and mapped in state.allowed:
        state.context_choice = BackendChoice.parse(mapped)
        if state.schedule is None and state.backend is None:
            return  # the context applies, as in diffusers
        own = "its schedule's backends" if state.schedule is not None else f"its own backend '{state.backend}'"
        reason = (f"this model has {own} (fluxlab.set_backend / set_schedule / attach(backend=...)), which takes "
                  "precedence over the context, as a model's set_attention_backend does in diffusers; "
                  f"fluxlab.set_backend(pipe, None) lets the context choose '{mapped}'")
    elif mapped is not None:
        reason = (f"its fluxlab equivalent '{mapped}' is outside this model's allowed set "
                  f"({', '.join(sorted(state.allowed))}); widen it with fluxlab.attach(pipe, "
                  f"allowed=fluxlab.models.FLUX2_BACKENDS | {{'{mapped}'}})")
    else:
        reason = refusal(name) or f"'{name}' is not a diffusers 0.42 attention backend name fluxlab knows"
    if name not in state.active_warned:
        state.active_warned.add(name)
        warnings.warn(
            f"diffusers' active attention backend '{name}' (diffusers' attention_backend() context, or "
            "set_attention_backend on another model) does not apply to this fluxlab-attached FLUX.2 model: "
            f"{reason}. fluxlab runs {_runs_instead(state)}.", DiffusersBackendWarning, stacklevel=4)


# -- diffusers' setters while attached: mapped silently after a model's first call, which says what the mapping is


def _warn_setter_once(state, message: str) -> None:
    if not state.setter_warned:
        state.setter_warned = True
        warnings.warn(message + " Further diffusers setter calls on this model are mapped the same way without a "
                      "warning.", DiffusersBackendWarning, stacklevel=3)


def _set_attention_backend(state, backend: str) -> None:
    mapped = fluxlab_name(backend)  # hub and unmatched names raise, naming the fluxlab backend to use
    state.set_backend(mapped)
    _warn_setter_once(state, f"diffusers' set_attention_backend('{_name(backend)}') on a fluxlab-attached FLUX.2 "
                             f"model: fluxlab now runs '{mapped}' (the same kernel family) for it, as "
                             f"fluxlab.set_backend(pipe, '{mapped}') would.")


def _reset_attention_backend(state) -> None:
    state.set_backend(None)
    _warn_setter_once(state, "diffusers' reset_attention_backend() on a fluxlab-attached FLUX.2 model: fluxlab goes "
                             "back to its automatic choice for it, as fluxlab.set_backend(pipe, None) would.")


def _set_layer_backend(state, layer: str, backend: str) -> None:
    name = _name(backend)
    fluxlab = SAME_KERNEL.get(name)
    how = (f"fluxlab.set_schedule(pipe, fluxlab.Schedule.by_layer({{'{layer}': '{fluxlab}'}}))" if fluxlab
           else _equivalent(name))
    warnings.warn(f"diffusers' set_attention_backend('{name}') on {layer} is not applied: this FLUX.2 model is "
                  f"attached to fluxlab, which runs {_runs_instead(state)} for it. Per layer, use {how}.",
                  DiffusersBackendWarning, stacklevel=2)


def install_setters(state) -> None:
    """Shadow diffusers' setters on this model's instances (the classes stay untouched) until ``remove_setters``."""
    transformer = state.transformer
    transformer.set_attention_backend = functools.partial(_set_attention_backend, state)
    transformer.reset_attention_backend = functools.partial(_reset_attention_backend, state)
    for layer in state.layer_names:
        transformer.get_submodule(layer).set_attention_backend = functools.partial(_set_layer_backend, state, layer)


def remove_setters(state) -> None:
    modules = [(state.transformer, _SETTERS)]
    modules += [(state.transformer.get_submodule(layer), _SETTERS[:1]) for layer in state.layer_names]
    for module, names in modules:
        for name in names:
            module.__dict__.pop(name, None)
