"""diffusers' own attention settings next to fluxlab's: names mapped, hub kernels refused, nothing silently ignored.

While fluxlab is attached to a FLUX.2 transformer, fluxlab decides its attention. A diffusers choice made before
attaching (``transformer.set_attention_backend(...)``, ``DIFFUSERS_ATTN_BACKEND``) is named in a warning at attach;
``transformer.set_attention_backend(name)`` made while attached becomes ``fluxlab.set_backend`` with the fluxlab name
of the same kernel family (warned, so the mapping is visible); ``reset_attention_backend()`` becomes
``set_backend(None)``; a per-layer ``attn.set_attention_backend`` and diffusers' ``attention_backend()`` context are
warned about, naming what fluxlab runs instead. Detaching restores the diffusers settings the model had before.
"""

from __future__ import annotations

import functools
import warnings

from ..errors import FluxlabWarning

DIFFUSERS_DEFAULT = "native"

# diffusers 0.42 backend name -> the fluxlab backend of the same kernel family.
SAME_KERNEL: dict[str, str] = {
    "native": "sdpa",
    "_native_cudnn": "sdpa_cudnn",
    "_native_efficient": "sdpa_efficient",
    "_native_flash": "sdpa_flash",
    "_native_math": "sdpa_math",
    "flash": "fa2",  # diffusers' `flash` is the flash-attn package: FlashAttention-2
    "flash_varlen": "fa2",  # the same kernel over packed sequences; FLUX.2's calls have no padding to pack
    "_flash_3": "fa3",
    "_flash_varlen_3": "fa3",
    "flex": "flex",
    "sage": "sage",  # SageAttention (diffusers wants >= 2.1.1; fluxlab's adapter runs 1.0.6's Triton kernel)
    "sage_varlen": "sage",
    "_sage_qk_int8_pv_fp16_triton": "sage",  # SageAttention's Triton kernel: int8 QK^T, fp16 PV
    "_sage_qk_int8_pv_fp8_cuda_sm90": "sage2",  # SageAttention 2's Hopper kernel: int8 QK^T, fp8 PV
}

# Kernels diffusers downloads from the Hugging Face Hub at run time -> (fluxlab backend to use, what it is).
HUB_KERNELS: dict[str, tuple[str, str]] = {
    "flash_hub": ("fa2", "FlashAttention-2"),
    "flash_varlen_hub": ("fa2", "FlashAttention-2 (varlen)"),
    "_flash_3_hub": ("fa3", "FlashAttention-3"),
    "_flash_3_varlen_hub": ("fa3", "FlashAttention-3 (varlen)"),
    "flash_4_hub": ("fa4", "FlashAttention-4"),
    "aiter_fa2_hub": ("aiter", "AMD AITER's CK FlashAttention-2"),
    "sage_hub": ("sage", "SageAttention"),
    "sage_blackwell_hub": ("sage", "SageAttention 3 for Blackwell"),
}

# diffusers backends with no fluxlab backend of the same family -> (nearest fluxlab backend or None, what it is).
NO_EQUIVALENT: dict[str, tuple[str | None, str]] = {
    "_native_npu": (None, "Ascend NPU attention (torch_npu)"),
    "_native_xla": (None, "XLA / TPU flash attention"),
    "xformers": ("sdpa_efficient", "xFormers' memory-efficient kernel"),
    "_sage_qk_int8_pv_fp8_cuda": ("sage", "SageAttention 2's CUDA kernel (int8 QK^T, fp8 PV)"),
    "_sage_qk_int8_pv_fp16_cuda": ("sage", "SageAttention 2's CUDA kernel (int8 QK^T, fp16 PV)"),
}


class DiffusersBackendWarning(FluxlabWarning):
    """A diffusers attention setting meets a fluxlab-attached model: the message says what runs instead."""


def _name(backend) -> str:
    return getattr(backend, "value", backend)  # AttentionBackendName members are str enums


def refusal(name: str) -> str | None:
    """Why a diffusers backend name has no fluxlab backend here, naming the one to use; None if it maps."""
    key = name.strip().lower()
    if key in HUB_KERNELS:
        use, what = HUB_KERNELS[key]
        return (f"'{key}' is diffusers' Hugging Face Hub build of {what}, downloaded when it is first used; "
                f"fluxlab runs installed kernels only. Use fluxlab's '{use}' (fluxlab doctor says how to install "
                "it).")
    if key in NO_EQUIVALENT:
        nearest, what = NO_EQUIVALENT[key]
        use = f" The nearest fluxlab backend is '{nearest}'." if nearest else ""
        return f"diffusers' '{key}' is {what}; fluxlab has no backend of that kernel family.{use}"
    return None


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
    state.active_seen = _registry()._active_backend


def note_active_change(state, active) -> None:
    """Called when diffusers' process-wide backend changed while attached (``attention_backend()``, a setter on
    another model): warn once per backend that this model keeps running fluxlab's choice."""
    state.active_seen = active
    name = _name(active)
    if name == DIFFUSERS_DEFAULT or name in state.active_warned:
        return
    state.active_warned.add(name)
    warnings.warn(
        f"diffusers' active attention backend is now '{name}' (diffusers' attention_backend() context, or "
        "set_attention_backend on another model); this FLUX.2 model is attached to fluxlab, which runs "
        f"{_runs_instead(state)} instead. {_equivalent(name)}; choose it with fluxlab.set_backend(pipe, ...) or "
        "fluxlab.use_backend(...).", DiffusersBackendWarning, stacklevel=4)


# -- diffusers' setters while attached ------------------------------------------------------------------------------


def _set_attention_backend(state, backend: str) -> None:
    from .attach import set_backend

    name = _name(backend).strip().lower()
    mapped = fluxlab_name(name)  # hub and unmatched names raise, naming the fluxlab backend to use
    set_backend(state.transformer, mapped)
    warnings.warn(f"diffusers' set_attention_backend('{name}') on a fluxlab-attached FLUX.2 model: fluxlab now runs "
                  f"'{mapped}' (the same kernel family) for it, as fluxlab.set_backend(pipe, '{mapped}') would.",
                  DiffusersBackendWarning, stacklevel=2)


def _reset_attention_backend(state) -> None:
    from .attach import set_backend

    set_backend(state.transformer, None)
    warnings.warn("diffusers' reset_attention_backend() on a fluxlab-attached FLUX.2 model: fluxlab goes back to "
                  "its automatic choice for it, as fluxlab.set_backend(pipe, None) would.",
                  DiffusersBackendWarning, stacklevel=2)


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
