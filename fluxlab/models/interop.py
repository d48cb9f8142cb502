"""diffusers' own attention settings next to fluxlab's: names mapped, hub kernels refused, nothing silently ignored.

While fluxlab is attached to a FLUX.2 transformer, fluxlab decides its attention, and diffusers' idioms keep working
through it, with the fluxlab backend of the same kernel family:

- ``transformer.set_attention_backend(name)`` while attached becomes ``fluxlab.set_backend`` with the mapped name
  (warned once per model, so the mapping is visible); ``reset_attention_backend()`` becomes ``set_backend(None)``.
- diffusers' ``attention_backend(name)`` context (or any change of diffusers' process-wide backend while attached)
  applies to an attached model that has no backend of its own, as in diffusers, where a model's
  ``set_attention_backend`` beats the context: schedule > the model's backend > diffusers' context >
  ``fluxlab.use_backend`` > ``$FLUXLAB_ATTENTION_BACKEND`` > the priority list. A name that cannot apply (a hub
  kernel, no fluxlab equivalent, outside the model's allowed set, or overridden by the model's own backend) is
  refused once per model and name, with the reason, and fluxlab's choice runs.
- A diffusers choice made before attaching (``set_attention_backend``, ``DIFFUSERS_ATTN_BACKEND``) is named in a
  warning at attach; a per-layer ``attn.set_attention_backend`` is warned about (use a fluxlab Schedule). Detaching
  restores the diffusers settings the model had before.
"""

from __future__ import annotations

import functools
import warnings

from ..dispatch import BackendChoice
from ..backends import BUILTIN_BACKENDS
from ..registry import HUB_KERNELS, NO_EQUIVALENT, refusal  # noqa: F401  (names kept here for callers)
from ..errors import DiffusersBackendWarning

DIFFUSERS_DEFAULT = "native"

# diffusers 0.42 backend name -> the fluxlab backend of the same kernel family (each adapter declares its
# ``diffusers=`` names).
SAME_KERNEL: dict[str, str] = {name: b.name for b in BUILTIN_BACKENDS for name in b.diffusers}


def _name(backend) -> str:
    return getattr(backend, "value", backend)  # AttentionBackendName members are str enums


def fluxlab_name(name) -> str:
    """The fluxlab backend of the same kernel family as diffusers' backend ``name``; refused names raise."""
    from ..errors import UnknownBackendError

    key = _name(name).strip().lower()
    if key in SAME_KERNEL:
        return SAME_KERNEL[key]
    raise UnknownBackendError(refusal(key) or f"'{key}' is not a diffusers 0.42 attention backend name")


# -- what diffusers had chosen -----------------------------------------------------------------------------------


def _registry():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry


def active_backend() -> str:
    """diffusers' process-wide backend: ``attention_backend()``'s, the last ``set_attention_backend``'s, or
    ``$DIFFUSERS_ATTN_BACKEND``'s."""
    return _name(_registry()._active_backend)


def diffusers_settings(state) -> dict[str, list[str]]:
    """diffusers backend name -> the layers whose processors would run it, for settings other than the default."""
    active = active_backend()
    settings: dict[str, list[str]] = {}
    for name in state.layer_names:
        explicit = getattr(state.transformer.get_submodule(name).processor, "_attention_backend", None)
        chosen = _name(explicit) if explicit is not None else active
        if chosen != DIFFUSERS_DEFAULT:
            settings.setdefault(chosen, []).append(name)
    return settings


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


def _layers(layers: list[str], total: int) -> str:
    return "all its attention layers" if len(layers) == total else ", ".join(layers)


def warn_at_attach(state) -> None:
    """Name every diffusers setting that attaching overrides, and what fluxlab runs instead."""
    for name, layers in diffusers_settings(state).items():
        keep = (f" To keep it, attach with backend='{SAME_KERNEL[name]}'." if name in SAME_KERNEL else "")
        warnings.warn(
            f"fluxlab.attach: diffusers' attention backend '{name}' (set on {_layers(layers, len(state.layer_names))}"
            f" or process-wide) is not used while fluxlab is attached; fluxlab runs {_runs_instead(state)} instead. "
            f"{_equivalent(name)}.{keep} fluxlab.detach puts diffusers' setting back.",
            DiffusersBackendWarning, stacklevel=3)
    state.active_seen = state.active_at_attach = _registry()._active_backend


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
    if name in state.active_warned:
        return
    state.active_warned.add(name)
    warnings.warn(
        f"diffusers' active attention backend '{name}' (diffusers' attention_backend() context, or "
        "set_attention_backend on another model) does not apply to this fluxlab-attached FLUX.2 model: "
        f"{reason}. fluxlab runs {_runs_instead(state)}.", DiffusersBackendWarning, stacklevel=4)


# -- diffusers' setters while attached ------------------------------------------------------------------------------


def _warn_setter_once(state, message: str) -> None:
    """diffusers' setters map silently after the first call on a model: the first says what the mapping is."""
    if state.setter_warned:
        return
    state.setter_warned = True
    warnings.warn(message + " Further diffusers setter calls on this model are mapped the same way without a "
                  "warning.", DiffusersBackendWarning, stacklevel=3)


def _set_attention_backend(state, backend: str) -> None:
    name = _name(backend).strip().lower()
    mapped = fluxlab_name(name)  # hub and unmatched names raise, naming the fluxlab backend to use
    state.set_backend(mapped)
    _warn_setter_once(state, f"diffusers' set_attention_backend('{name}') on a fluxlab-attached FLUX.2 model: fluxlab "
                             f"now runs '{mapped}' (the same kernel family) for it, as "
                             f"fluxlab.set_backend(pipe, '{mapped}') would.")


def _reset_attention_backend(state) -> None:
    state.set_backend(None)
    _warn_setter_once(state, "diffusers' reset_attention_backend() on a fluxlab-attached FLUX.2 model: fluxlab goes "
                             "back to its automatic choice for it, as fluxlab.set_backend(pipe, None) would.")


def _set_layer_backend(state, layer: str, backend: str) -> None:
    name = _name(backend).strip().lower()
    fluxlab = SAME_KERNEL.get(name)
    how = (f"fluxlab.set_schedule(pipe, fluxlab.Schedule.by_layer({{'{layer}': '{fluxlab}'}}))" if fluxlab
           else _equivalent(name))
    warnings.warn(f"diffusers' set_attention_backend('{name}') on {layer} is not applied: this FLUX.2 model is "
                  f"attached to fluxlab, which runs {_runs_instead(state)} for it. Per layer, use {how}.",
                  DiffusersBackendWarning, stacklevel=2)


_SETTERS = ("set_attention_backend", "reset_attention_backend")


def install_setters(state) -> None:
    """Shadow diffusers' setters on this model's instances (the classes stay untouched) until ``remove_setters``."""
    transformer = state.transformer
    transformer.set_attention_backend = functools.partial(_set_attention_backend, state)
    transformer.reset_attention_backend = functools.partial(_reset_attention_backend, state)
    for layer in state.layer_names:
        transformer.get_submodule(layer).set_attention_backend = functools.partial(_set_layer_backend, state, layer)


def remove_setters(state) -> None:
    transformer = state.transformer
    for module, names in [(transformer, _SETTERS)] + [(transformer.get_submodule(layer), _SETTERS[:1])
                                                      for layer in state.layer_names]:
        for name in names:
            module.__dict__.pop(name, None)
