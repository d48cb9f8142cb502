"""``fluxlab.load_flux2``: a FLUX.2 pipeline from the tiny offline model, a local folder or the Hub, attached."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

from ..defaults import DEFAULT_MODEL
from ..errors import LoadArgumentError, ModelSourceError
from .attach import attach, check_allowed, resolve_allowed
from .checkpoint import default_out_layers, realign_weights, validate_flux2_config

# Where the trained FLUX.2-architecture model fluxlab ships lives (diffusers layout, model_index.json at the top).
EMBEDDED_DIR = Path(__file__).with_name("embedded")

# diffusers pipeline class -> variant; the variant picks the class when loading from the Hub.
PIPELINE_VARIANTS = {"Flux2Pipeline": "dev", "Flux2KleinPipeline": "klein", "Flux2KleinKVPipeline": "klein",
                     "Flux2KleinInpaintPipeline": "klein"}
VARIANT_PIPELINES = {"dev": "Flux2Pipeline", "klein": "Flux2KleinPipeline"}

log = logging.getLogger("fluxlab")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_flux2(source: str = DEFAULT_MODEL, flux2_variant: str | None = None, device=None, dtype=None, backend=None,
               allowed=None, offload=None, *, height: int = 1024, width: int = 1024, memory_budget=None,
               variant: str | None = None, torch_dtype=None, revision: str | None = None, cache_dir=None,
               use_safetensors: bool | None = None):
    """A FLUX.2 pipeline with fluxlab attached.

    ``source``: ``"embedded"`` (the default: the small trained model fluxlab ships, offline), ``"tiny"`` (random
    weights, built offline; ``flux2_variant`` "dev" or "klein"), a ``save_pretrained`` folder or a Hub id (their
    variant is read from model_index.json; one that disagrees raises). ``backend`` / ``allowed``: as for
    ``fluxlab.attach``, checked before any weights load. ``dtype``, ``variant`` (the weight files' variant, e.g.
    ``"fp16"``; ``"dev"``/``"klein"`` still mean ``flux2_variant``, deprecated), ``torch_dtype``, ``revision``,
    ``cache_dir``, ``use_safetensors``: as in diffusers' ``from_pretrained``, for folders and Hub ids.

    ``offload``: None, ``"model"``, ``"sequential"`` or ``"auto"``; the memory at ``height`` x ``width`` is estimated
    before any weight loads and a run that cannot fit ``memory_budget`` (default: the free accelerator memory) is
    refused with ``MemoryBudgetError``. What was chosen and why: ``pipe.fluxlab_offload``. docs/guide.md ("FLUX.2",
    "Memory") says more.
    """
    import torch

    from .offload import apply_offload, plan_offload, resolve_device

    flux2_variant, weights = _diffusers_keywords(flux2_variant, variant, dtype, torch_dtype, revision=revision,
                                                 cache_dir=cache_dir, use_safetensors=use_safetensors)
    dtype = weights.pop("dtype")
    allowed_set = resolve_allowed(allowed)
    check_allowed(backend, allowed_set)  # refuse a bad backend before any weights load
    source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"load_flux2({source!r}): the model source is empty; pass 'tiny', 'embedded', a "
                               "local diffusers pipeline folder or a Hub id (e.g. 'black-forest-labs/FLUX.2-dev')")
    if weights and source in ("tiny", "embedded"):
        raise LoadArgumentError(
            f"{', '.join(f'{k}={v!r}' for k, v in weights.items())}: diffusers' from_pretrained options choose "
            f"weight files, and '{source}' has none to choose ("
            + ("built in memory" if source == "tiny" else "one float32 set ships with fluxlab")
            + "). Leave them out, or load a folder or Hub id.")
    target = resolve_device(offload, device)  # refuses unknown values, and offloading without an accelerator
    estimate = None
    if offload is not None or memory_budget is not None or (target is not None and target.type != "cpu"):
        try:
            estimate = estimate_source(source, flux2_variant, dtype, height, width)
        except ModelSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unusual config must not block loading; the plan says so
            log.warning("fluxlab.load_flux2: no memory estimate for %r (%s: %s)", source, type(exc).__name__, exc)
    plan = plan_offload(estimate, offload, device, memory_budget)  # refuses here, before any weight loads
    if source == "tiny":
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(flux2_variant or "dev", dtype=dtype or torch.float32)
    elif source == "embedded":
        if not (EMBEDDED_DIR / "model_index.json").is_file():
            raise NotImplementedError(
                f"the embedded FLUX.2 model is not in this install (expected a diffusers folder at {EMBEDDED_DIR}; "
                "it ships with the trained model). Use source='tiny' (random weights, offline) or a local "
                "folder written by pipe.save_pretrained(...).")
        from .embedded import load_embedded  # 64x64 defaults, offline

        pipe = load_embedded(dtype=dtype, flux2_variant=flux2_variant)
    elif Path(source).expanduser().exists():
        pipe = _from_folder(Path(source).expanduser(), flux2_variant, dtype, weights)
    elif _HUB_ID.fullmatch(source) and not source.startswith((".", "~")):
        pipe = _from_hub(source, flux2_variant, dtype, weights)
    else:
        raise ModelSourceError(
            f"no FLUX.2 model at '{source}': that folder does not exist. Pass a diffusers pipeline folder (with "
            "model_index.json, as pipe.save_pretrained(folder) writes), a Hugging Face Hub id such as "
            "'black-forest-labs/FLUX.2-dev', or 'tiny' for the offline random-weight model.")
    apply_offload(pipe, plan)
    if source not in ("tiny", "embedded") and plan.mode is None and pipe.transformer.device.type == "cpu":
        realign_weights(pipe)  # loaded weights stay views of the mmap'd file (load_embedded realigns its own)
    return attach(pipe, backend=backend, allowed=allowed_set)


def _diffusers_keywords(flux2_variant, variant, dtype, torch_dtype, **weights) -> tuple[str | None, dict]:
    """-> (the FLUX.2 variant, diffusers' from_pretrained keywords that were given, ``dtype`` included)."""
    if variant in VARIANT_PIPELINES:  # fluxlab's old meaning of variant=: diffusers' weight variant is never these
        if flux2_variant is not None and flux2_variant != variant:
            raise LoadArgumentError(f"flux2_variant={flux2_variant!r} and variant={variant!r} disagree; variant= is "
                                    "diffusers' weight-file variant (e.g. 'fp16'): pass flux2_variant only")
        warnings.warn(f"load_flux2(variant={variant!r}) is deprecated: variant= is diffusers' weight-file variant "
                      f"(e.g. 'fp16'); FLUX.2 [dev] or [klein] is flux2_variant={variant!r}.", DeprecationWarning,
                      stacklevel=3)
        flux2_variant, variant = variant, None
    if flux2_variant is not None and flux2_variant not in VARIANT_PIPELINES:
        raise LoadArgumentError(f"unknown FLUX.2 variant flux2_variant={flux2_variant!r}; choose 'dev' or 'klein' (or "
                                "None to read it from the model folder)")
    if torch_dtype is not None:  # diffusers' older name, which diffusers 0.42 still takes
        if dtype is not None and dtype != torch_dtype:
            raise LoadArgumentError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; they are one setting "
                                    "(diffusers 0.42 calls it dtype): pass one")
        dtype = torch_dtype
    given = {key: value for key, value in dict(weights, variant=variant).items() if value is not None}
    return flux2_variant, {"dtype": dtype, **given}


def estimate_source(source: str, variant: str | None, dtype, height: int = 1024, width: int = 1024):
    """The memory estimate of what ``load_flux2(source, ...)`` would load, from headers or configs, loading nothing;
    None when ``source`` is no model (loading then says what is wrong)."""
    import torch

    from .offload import estimate_folder, estimate_pipeline

    if source == "tiny":
        from .tiny import build_tiny_pipeline

        with torch.device("meta"):  # the real classes at the tiny configs, allocating nothing
            pipe = build_tiny_pipeline(variant or "dev", dtype=dtype or torch.float32)
        return estimate_pipeline(pipe, dtype=dtype or torch.float32, height=height, width=width)
    folder = EMBEDDED_DIR if source == "embedded" else Path(source).expanduser()
    if folder.is_dir() and (folder / "model_index.json").is_file():
        return estimate_folder(folder, dtype=dtype, height=height, width=width)
    if _HUB_ID.fullmatch(source) and not folder.exists() and not source.startswith((".", "~")):
        from huggingface_hub import snapshot_download

        try:  # the JSON configs only (safetensors headers are used if already cached)
            configs = Path(snapshot_download(source, allow_patterns=["*.json"], local_files_only=_offline()))
        except Exception as exc:  # noqa: BLE001 - the same advice as a failed load
            raise _hub_error(source, exc) from exc
        return estimate_folder(configs, dtype=dtype, height=height, width=width)
    return None


def _check_variant(class_name: str, variant: str | None, where) -> None:
    found = PIPELINE_VARIANTS.get(class_name)
    if found is None:
        raise ModelSourceError(f"{where} holds a {class_name}, not a FLUX.2 pipeline ({', '.join(PIPELINE_VARIANTS)})")
    if variant is not None and variant != found:
        raise LoadArgumentError(f"{where} holds a {class_name} (FLUX.2 [{found}]) but flux2_variant={variant!r} was "
                                f"asked for; pass flux2_variant={found!r} or leave it out")


def _from_folder(folder: Path, variant: str | None, dtype, weights: dict):
    import diffusers

    if not folder.is_dir():
        raise ModelSourceError(f"'{folder}' is a file; load_flux2 expects a diffusers pipeline folder containing "
                               "model_index.json (as pipe.save_pretrained(folder) writes)")
    index = folder / "model_index.json"
    if not index.is_file():
        inside = sorted(p.name for p in folder.iterdir())[:10]
        raise ModelSourceError(f"'{folder}' has no model_index.json, so it is not a diffusers pipeline folder "
                               f"(it contains: {', '.join(inside) or 'nothing'}). Point load_flux2 at the folder "
                               "pipe.save_pretrained(folder) wrote, or at a downloaded FLUX.2 checkpoint.")
    class_name = json.loads(index.read_text()).get("_class_name", "?")
    _check_variant(class_name, variant, f"'{folder}'")
    pipeline_class = getattr(diffusers, class_name)
    files = {name: folder / name / "config.json" for name in ("transformer", "vae", "text_encoder")}
    if all(f.is_file() for f in files.values()):  # else diffusers names the missing component itself
        # The component configs must fit together before weights load: a clear message, not a shape error.
        configs = {name: json.loads(f.read_text()) for name, f in files.items()}
        validate_flux2_config(configs["transformer"], configs["vae"], configs["text_encoder"],
                              text_encoder_out_layers=default_out_layers(pipeline_class))
    return pipeline_class.from_pretrained(folder, dtype=dtype, local_files_only=True, **weights)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _from_hub(repo_id: str, variant: str | None, dtype, weights: dict):
    import diffusers

    cls = getattr(diffusers, VARIANT_PIPELINES[variant]) if variant else diffusers.DiffusionPipeline
    try:
        # HF_HUB_OFFLINE is read here, per call, so setting it after import is honoured too.
        pipe = cls.from_pretrained(repo_id, dtype=dtype, local_files_only=_offline(), **weights)
    except OSError as exc:
        raise _hub_error(repo_id, exc) from exc
    _check_variant(type(pipe).__name__, variant, f"'{repo_id}'")
    return pipe


def _hub_error(repo_id: str, exc: Exception) -> ModelSourceError:
    why = "HF_HUB_OFFLINE is set" if _offline() else "no network, or no such repository"
    said = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return ModelSourceError(
        f"could not load '{repo_id}' from the Hugging Face Hub ({why}; there is no local folder of that name "
        f"either). Download it where there is network (`hf download {repo_id} --local-dir DIR`), "
        f"copy DIR here and pass the folder: fluxlab.load_flux2('DIR'). Hub said: {said}")
