"""A FLUX.2 pipeline's memory: estimated before its weights load (from safetensors headers or configs, plus an
activation margin), placed (all on the accelerator, or offloaded to host memory with accelerate), measured after a
run."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import re
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from .._compat import moved
from ..errors import MemoryBudgetError, OffloadError
from ..util import torch_dtype_name
from .checkpoint import config_dict
from .limits import BOUNDS, vae_multiple

GIB = 1024**3
# safetensors dtype names -> bytes per element; those starting with F or BF are floating.
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                        "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
# What diffusers and transformers name single-file and sharded weights (variants such as .fp16 are not counted).
WEIGHT_FILES = re.compile(r"(diffusion_pytorch_model|model)(-\d+-of-\d+)?\.safetensors")
DEFAULT_TEXT_TOKENS = BOUNDS["max_sequence_length"].high  # the FLUX.2 pipelines' max_sequence_length
# Allocator fragmentation, cuBLAS/cuDNN workspaces and the pipeline's small tensors: kept free on top of the margin.
HEADROOM_BYTES = 1 * GIB
OFFLOAD_MODES = (None, "model", "sequential", "auto")
MODES = (None, "model", "sequential")  # what a decision can be, most memory first
Budget = int | Callable[[torch.device], int] | None
log = logging.getLogger("fluxlab")


def gib(n: int | float | None) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below (tiny models are kilobytes)."""
    if n is None:
        return "n/a"
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024**2:.2f} MiB"


@dataclasses.dataclass(frozen=True)
class ComponentSize:
    """One model of the pipeline: element count of its weights (parameters and stored buffers) and their bytes."""

    name: str
    elements: int
    weight_bytes: int
    largest_module_bytes: int  # the biggest single module's own weights: what sequential offload moves at once


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Weights per component (in the dtype they will run in) and an activation margin at one image size."""

    components: dict[str, ComponentSize]
    activation_bytes: int  # the largest component's working memory at this size, HEADROOM_BYTES included
    height: int
    width: int
    dtype: str | None  # None: the dtype the weights are stored in
    source: str  # "safetensors headers", "configs (meta device)", or "built modules"

    @property
    def weight_bytes(self) -> int:
        return sum(c.weight_bytes for c in self.components.values())

    @property
    def largest_component(self) -> ComponentSize:
        return max(self.components.values(), key=lambda c: c.weight_bytes)

    def peak_bytes(self, offload: str | None) -> int:
        """Accelerator memory a run needs: every weight (no offload), the largest component (``"model"``) or the
        largest single module (``"sequential"``), plus activations."""
        resident = {None: self.weight_bytes, "model": self.largest_component.weight_bytes,
                    "sequential": max((c.largest_module_bytes for c in self.components.values()), default=0)}
        return resident[offload] + self.activation_bytes

    def describe(self) -> str:
        parts = ", ".join(f"{c.name} {gib(c.weight_bytes)}" for c in
                          sorted(self.components.values(), key=lambda c: -c.weight_bytes))
        return (f"weights {gib(self.weight_bytes)} ({parts}; {self.dtype or 'stored dtypes'}, from {self.source}) "
                f"+ activations ~{gib(self.activation_bytes)} at {self.width}x{self.height}")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "weight_bytes": self.weight_bytes,
                "peak_bytes": {str(mode): self.peak_bytes(mode) for mode in MODES}}


# -- weights ---------------------------------------------------------------------------------------------------


def _itemsize(dtype: torch.dtype | None, stored_floating: bool, stored_size: int) -> int:
    """Bytes per element once loaded: floating weights take the requested dtype, the rest keep theirs."""
    return dtype.itemsize if dtype is not None and stored_floating else stored_size


def _size_from_headers(name: str, files: list[Path], dtype: torch.dtype | None) -> ComponentSize:
    """From the files' headers alone (read by hand: ``safetensors.safe_open`` wants every tensor's bytes there)."""
    elements, total, per_module = 0, 0, {}
    for path in files:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        header.pop("__metadata__", None)
        for tensor, info in header.items():
            count = math.prod(info["shape"])
            nbytes = count * _itemsize(dtype, info["dtype"].startswith(("F", "BF")),
                                       SAFETENSORS_ITEMSIZE[info["dtype"]])
            elements += count
            total += nbytes
            module = tensor.rsplit(".", 1)[0]
            per_module[module] = per_module.get(module, 0) + nbytes
    return ComponentSize(name, elements, total, max(per_module.values(), default=0))


def _size_of_module(name: str, module: torch.nn.Module, dtype: torch.dtype | None) -> ComponentSize:
    """Sizes of a built (or meta-device) module: its parameters and persistent buffers, each shared tensor once."""
    seen, elements, total, largest = set(), 0, 0, 0
    for sub in module.modules():
        own = 0
        persistent = [b for n, b in sub.named_buffers(recurse=False) if n not in sub._non_persistent_buffers_set]
        for tensor in [*sub.parameters(recurse=False), *persistent]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                elements += tensor.numel()
                own += tensor.numel() * _itemsize(dtype, tensor.is_floating_point(), tensor.element_size())
        total += own
        largest = max(largest, own)
    return ComponentSize(name, elements, total, largest)


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files ``from_pretrained`` loads from a component folder (index-listed shards if sharded)."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        if WEIGHT_FILES.fullmatch(index.name[: -len(".index.json")]):
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [p for p in sorted(folder.glob("*.safetensors")) if WEIGHT_FILES.fullmatch(p.name)]


def _meta_model(library: str, class_name: str, folder: Path):
    """Build a component from its config.json on the meta device (no memory), or None if it is not a torch model."""
    cls = getattr(importlib.import_module(library), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return None
    with torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(folder))
        from transformers import AutoConfig

        return cls(AutoConfig.from_pretrained(folder))


def estimate_folder(folder, *, dtype: torch.dtype | None = None, height: int = 1024, width: int = 1024,
                    text_tokens: int = DEFAULT_TEXT_TOKENS) -> MemoryEstimate:
    """Estimate from a diffusers pipeline folder before loading it: safetensors headers where the weights are
    there, else each component built from its config on the meta device (e.g. a Hub snapshot of configs only)."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    sizes, sources, configs = {}, set(), {}
    models = {name: value for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
              and len(value) == 2 and value[0] in ("diffusers", "transformers")}
    for name, (library, class_name) in models.items():
        sub = folder / name
        if (sub / "config.json").is_file():
            configs[name] = json.loads((sub / "config.json").read_text())
        files = _weight_files(sub) if sub.is_dir() else []
        if files:
            sizes[name] = _size_from_headers(name, files, dtype)
            sources.add("safetensors headers")
        elif name in configs and (model := _meta_model(library, class_name, sub)) is not None:
            sizes[name] = _size_of_module(name, model, dtype)
            sources.add("configs (meta device)")
    return MemoryEstimate(sizes, activation_bytes(configs, height, width, dtype, text_tokens), height, width,
                          None if dtype is None else torch_dtype_name(dtype),
                          " + ".join(sorted(sources)) or "nothing (no weights found)")


def estimate_pipeline(pipe, *, dtype: torch.dtype | None = None, height: int = 1024, width: int = 1024,
                      text_tokens: int = DEFAULT_TEXT_TOKENS) -> MemoryEstimate:
    """Estimate from a pipeline object: built, or with its models on the meta device (nothing allocated)."""
    models = {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    sizes = {name: _size_of_module(name, model, dtype) for name, model in models.items()}
    configs = {name: config_dict(getattr(model, "config", None)) for name, model in models.items()}
    on_meta = any(p.is_meta for model in models.values() for p in model.parameters())
    return MemoryEstimate(sizes, activation_bytes(configs, height, width, dtype, text_tokens), height, width,
                          None if dtype is None else torch_dtype_name(dtype),
                          "configs (meta device)" if on_meta else "built modules")


def activation_bytes(configs: dict, height: int, width: int, dtype: torch.dtype | None, text_tokens: int) -> int:
    """Working memory of the largest stage at ``height`` x ``width``: a margin, not a measurement (how it is made:
    docs/flux2_internals.md)."""
    item = 4 if dtype is None else dtype.itemsize
    vae = configs.get("vae", {})
    scale = vae_multiple(vae)
    image_tokens = (height // scale) * (width // scale)
    stages = [0]
    transformer = configs.get("transformer", {})
    if transformer:
        inner = transformer.get("num_attention_heads", 48) * transformer.get("attention_head_dim", 128)
        mlp = int(inner * transformer.get("mlp_ratio", 3.0))
        stages.append((image_tokens + text_tokens) * (3 * inner + 2 * mlp + 8 * inner) * item)
    if vae:
        stages.append(8 * height * width * vae.get("block_out_channels", (128,))[0] * item)
    text = configs.get("text_encoder", {})
    text = text.get("text_config", text) or {}
    if text:
        hidden, layers = text.get("hidden_size", 0), text.get("num_hidden_layers", 0)
        stages.append(((layers + 1) * hidden + 4 * text.get("intermediate_size", 0)) * text_tokens * item)
    return max(stages) + HEADROOM_BYTES


# -- where the weights live ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OffloadDecision:
    """What ``load_flux2`` did with ``offload=``: the mode it chose, why, the estimate and the memory budget."""

    requested: str | None
    mode: str | None  # None (weights on ``device``), "model" or "sequential"
    device: str | None  # where the pipeline runs
    reason: str
    estimate: MemoryEstimate | None = None
    budget_bytes: int | None = None

    @property
    def peak_estimate_bytes(self) -> int | None:
        return None if self.estimate is None else self.estimate.peak_bytes(self.mode)

    def __str__(self) -> str:
        return f"offload={self.mode!r} (asked: {self.requested!r}) on {self.device or 'cpu'}: {self.reason}"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "peak_estimate_bytes": self.peak_estimate_bytes,
                "estimate": None if self.estimate is None else self.estimate.as_dict()}


def resolve_device(offload, device) -> torch.device | None:
    """The device the pipeline will run on; refuses unknown modes, and offloading where there is no accelerator."""
    if offload not in OFFLOAD_MODES:
        raise OffloadError(f"offload={offload!r} is not one of None, 'model', 'sequential', 'auto'. 'model' keeps one "
                           "component at a time on the accelerator, 'sequential' one layer at a time (slowest, least "
                           "memory), 'auto' picks from free memory and the pipeline's size.")
    target = torch.device(device) if device is not None else None
    if target is None and offload is not None and torch.cuda.is_available():
        target = torch.device("cuda", torch.cuda.current_device())
    if offload in ("model", "sequential") and (target is None or target.type == "cpu"):
        raise OffloadError(
            f"offload={offload!r} keeps weights in host memory and moves them to an accelerator when they run; "
            f"{'device=' + repr(str(target)) + ' is the CPU' if target is not None else 'this machine has none'}"
            ". On the CPU use offload=None (or 'auto', which means none there).")
    return target


def free_accelerator_memory(device) -> int:
    """Bytes torch may still allocate on ``device``: free device memory plus this process's cached blocks, capped by
    ``torch.cuda.set_per_process_memory_fraction`` (how an 80 GB card is imitated on a larger one)."""
    device = torch.device(device)
    if device.index is None:  # torch.cuda.get_per_process_memory_fraction wants an index
        device = torch.device(device.type, torch.cuda.current_device())
    free, total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = getter(device) if getter is not None else 1.0
    return int(min(free + reserved - allocated, fraction * total - allocated))


def _budget(device: torch.device | None, memory_budget: Budget) -> int | None:
    """Bytes given (a number, or a function of the device), measured on an accelerator, or None on the CPU."""
    if callable(memory_budget):
        return int(memory_budget(device))
    if memory_budget is not None:
        return int(memory_budget)
    return free_accelerator_memory(device) if device is not None and device.type == "cuda" else None


def plan_offload(estimate: MemoryEstimate | None, offload, device, memory_budget: Budget = None) -> OffloadDecision:
    """Choose where the weights live, before loading them; raise MemoryBudgetError if the run cannot fit."""
    target = resolve_device(offload, device)
    where = str(target) if target is not None else None
    on_accelerator = target is not None and target.type != "cpu"
    budget = _budget(target, memory_budget)

    def decided(mode, reason):
        return OffloadDecision(offload, mode, where, reason, estimate, budget)

    if offload == "auto" and not on_accelerator:
        return decided(None, "no accelerator here, so no offload: the pipeline runs on the CPU")
    if offload == "auto" and estimate is None:  # size unknown (an unusual config): the safe choice
        return decided("model", "no memory estimate for this pipeline, so model offload (one component on the "
                                "accelerator at a time)")
    if estimate is None or budget is None:
        missing = "no memory budget on the CPU" if budget is None else "no estimate"
        return decided(offload, f"no offload asked: the pipeline stays on {where or 'the CPU, where it is built'}"
                       if offload is None else f"as asked ({missing} to check)")
    need = {mode: estimate.peak_bytes(mode) for mode in MODES}
    have = f"{gib(budget)} free on {where or 'the CPU'}"
    fits = [mode for mode in MODES if need[mode] <= budget]
    if offload == "auto":
        if not fits:
            raise MemoryBudgetError(
                f"this pipeline cannot run on {where} even offloaded: {estimate.describe()}; with sequential offload "
                f"it still needs ~{gib(need['sequential'])} at once, and {have}. Use a smaller image, a GPU with more "
                "memory, or free memory held by other pipelines.", decided(None, "does not fit"))
        how = {None: "everything stays on the device",
               "model": f"one component at a time (largest: {estimate.largest_component.name} "
                        f"{gib(estimate.largest_component.weight_bytes)})",
               "sequential": "one module at a time (slow: weights cross the bus every step)"}[fits[0]]
        plan = decided(fits[0], f"needs ~{gib(need[fits[0]])} with offload={fits[0]!r}, {how}; {have}")
        log.info("fluxlab.load_flux2: %s", plan)
        return plan
    if offload not in fits:
        if not on_accelerator:
            hint = "use a smaller image or a machine with more memory"
        elif fits:
            hint = f"offload={fits[0]!r} fits (~{gib(need[fits[0]])}), or offload='auto' picks it"
        else:
            hint = "nothing fits, even sequential offload: use a smaller image or a GPU with more memory"
        raise MemoryBudgetError(
            f"refused before loading: with offload={offload!r} this pipeline needs ~{gib(need[offload])} on "
            f"{where or 'the CPU'} ({estimate.describe()}), and {have}. {hint}.", decided(offload, "does not fit"))
    return decided(offload, f"as asked: needs ~{gib(need[offload])}; {have}")


def apply_offload(pipe, plan: OffloadDecision):
    """Place ``pipe`` as planned: ``.to(device)``, or diffusers' model / sequential CPU offload (accelerate)."""
    if plan.mode == "model":
        pipe.enable_model_cpu_offload(device=plan.device)
    elif plan.mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=plan.device)
    elif plan.device is not None:
        pipe.to(plan.device)
    pipe.fluxlab_offload = plan
    return pipe


def execution_device(pipe) -> torch.device:
    """Where ``pipe``'s models run: the accelerator for an offloaded pipeline (its weights rest on the CPU)."""
    device = getattr(pipe, "_execution_device", None)
    return torch.device(device) if device is not None else pipe.transformer.device


# -- what a run used -------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak accelerator memory torch allocated inside a ``with`` block (``torch.cuda.max_memory_allocated``,
    reset on entry). ``bytes`` is None on the CPU, where there is no such counter: ``label`` says "n/a on CPU"."""

    def __init__(self, device):
        self.device = torch.device(device if device is not None else "cpu")
        self.bytes: int | None = None
        self.measured = self.device.type == "cuda" and torch.cuda.is_available()

    def __enter__(self):
        if self.measured:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.measured:
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        return False

    @property
    def label(self) -> str:
        if self.bytes is None:
            return f"peak GPU memory n/a on {self.device.type.upper() if self.device.type == 'cpu' else self.device}"
        return f"peak GPU memory {gib(self.bytes)}"

    def as_dict(self) -> dict:
        return {"peak_allocated_bytes": self.bytes, "device": str(self.device),
                "measured_by": ("torch.cuda.max_memory_allocated, reset before the call" if self.measured
                                else "n/a on CPU (no allocator counter)")}


__getattr__ = moved(__name__, {"OffloadPlan": "fluxlab.models.offload:OffloadDecision"})
