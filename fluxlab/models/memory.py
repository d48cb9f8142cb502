"""How much memory a FLUX.2 pipeline needs, known before its weights load, and how much a run really used.

Weights come from safetensors headers (exact, nothing read but the header) or from the configs (components built
on the meta device: parameter counts with no memory); activations are a documented margin at the image size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from pathlib import Path

import torch

from ..util import torch_dtype_name

GIB = 1024**3
# safetensors dtype names -> bytes per element.
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                        "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
FLOATING_SAFETENSORS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# What diffusers and transformers name single-file and sharded weights (variants such as .fp16 are not counted).
WEIGHT_FILES = re.compile(r"(diffusion_pytorch_model|model)(-\d+-of-\d+)?\.safetensors")
DEFAULT_TEXT_TOKENS = 512  # the FLUX.2 pipelines' max_sequence_length
# Allocator fragmentation, cuBLAS/cuDNN workspaces and the pipeline's small tensors: kept free on top of the margin.
HEADROOM_BYTES = 1 * GIB


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

    @property
    def largest_module_bytes(self) -> int:
        return max((c.largest_module_bytes for c in self.components.values()), default=0)

    def peak_bytes(self, offload: str | None) -> int:
        """Accelerator memory a run needs: every weight (no offload), the largest component (``"model"``: one
        component on the device at a time) or the largest single module (``"sequential"``), plus activations."""
        resident = {None: self.weight_bytes, "model": self.largest_component.weight_bytes,
                    "sequential": self.largest_module_bytes}[offload]
        return resident + self.activation_bytes

    def describe(self) -> str:
        parts = ", ".join(f"{c.name} {gib(c.weight_bytes)}" for c in
                          sorted(self.components.values(), key=lambda c: -c.weight_bytes))
        return (f"weights {gib(self.weight_bytes)} ({parts}; {self.dtype or 'stored dtypes'}, from {self.source}) "
                f"+ activations ~{gib(self.activation_bytes)} at {self.width}x{self.height}")

    def as_dict(self) -> dict:
        return {"weight_bytes": self.weight_bytes, "activation_bytes": self.activation_bytes,
                "components": {n: dataclasses.asdict(c) for n, c in self.components.items()},
                "height": self.height, "width": self.width, "dtype": self.dtype, "source": self.source,
                "peak_bytes": {str(mode): self.peak_bytes(mode) for mode in (None, "model", "sequential")}}


# -- weights ---------------------------------------------------------------------------------------------------


def _itemsize(dtype: torch.dtype | None, stored_floating: bool, stored_size: int) -> int:
    """Bytes per element once loaded: floating weights take the requested dtype, the rest keep theirs."""
    if dtype is not None and stored_floating:
        return torch.empty((), dtype=dtype).element_size()
    return stored_size


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes): the first 8 + N bytes, no tensor data.
    Read by hand, not with ``safetensors.safe_open``: that checks the file holds every tensor's bytes, and the
    estimate must work from the header alone (tests/test_offload.py cuts the files to their headers)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files ``from_pretrained`` loads from a component folder (index-listed shards if sharded)."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        if WEIGHT_FILES.fullmatch(index.name[: -len(".index.json")]):
            return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [p for p in sorted(folder.glob("*.safetensors")) if WEIGHT_FILES.fullmatch(p.name)]


def size_from_headers(name: str, files: list[Path], dtype: torch.dtype | None) -> ComponentSize:
    elements, total, per_module = 0, 0, {}
    for path in files:
        for tensor, info in read_safetensors_header(path).items():
            count = math.prod(info["shape"])
            stored = info["dtype"]
            nbytes = count * _itemsize(dtype, stored in FLOATING_SAFETENSORS, SAFETENSORS_ITEMSIZE[stored])
            elements += count
            total += nbytes
            module = tensor.rsplit(".", 1)[0]
            per_module[module] = per_module.get(module, 0) + nbytes
    return ComponentSize(name, elements, total, max(per_module.values(), default=0))


def size_of_module(name: str, module: torch.nn.Module, dtype: torch.dtype | None) -> ComponentSize:
    """Sizes of a built (or meta-device) module: its parameters and persistent buffers, each shared tensor once."""
    seen, elements, total, largest = set(), 0, 0, 0
    for sub in module.modules():
        own = 0
        persistent = [b for n, b in sub.named_buffers(recurse=False) if n not in sub._non_persistent_buffers_set]
        for tensor in [*sub.parameters(recurse=False), *persistent]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            elements += tensor.numel()
            own += tensor.numel() * _itemsize(dtype, tensor.is_floating_point(), tensor.element_size())
        total += own
        largest = max(largest, own)
    return ComponentSize(name, elements, total, largest)


def _model_components(index: dict) -> dict[str, tuple[str, str]]:
    return {name: tuple(value) for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and len(value) == 2
            and value[0] in ("diffusers", "transformers")}


def _meta_model(library: str, class_name: str, folder: Path):
    """Build a component from its config.json on the meta device (no memory), or None if it is not a torch model."""
    import importlib

    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
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
    for name, (library, class_name) in _model_components(index).items():
        sub = folder / name
        if (sub / "config.json").is_file():
            configs[name] = json.loads((sub / "config.json").read_text())
        files = weight_files(sub) if sub.is_dir() else []
        if files:
            sizes[name] = size_from_headers(name, files, dtype)
            sources.add("safetensors headers")
        elif (sub / "config.json").is_file():
            model = _meta_model(library, class_name, sub)
            if model is not None:
                sizes[name] = size_of_module(name, model, dtype)
                sources.add("configs (meta device)")
    return MemoryEstimate(sizes, activation_bytes(configs, height, width, dtype, text_tokens, sizes), height, width,
                          _dtype_name(dtype), " + ".join(sorted(sources)) or "nothing (no weights found)")


def estimate_pipeline(pipe, *, dtype: torch.dtype | None = None, height: int = 1024, width: int = 1024,
                      text_tokens: int = DEFAULT_TEXT_TOKENS) -> MemoryEstimate:
    """Estimate from a pipeline object: built, or with its models on the meta device (nothing allocated)."""
    sizes, configs = {}, {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            sizes[name] = size_of_module(name, component, dtype)
            config = getattr(component, "config", None)
            configs[name] = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    on_meta = any(p.is_meta for c in pipe.components.values() if isinstance(c, torch.nn.Module)
                  for p in c.parameters())
    return MemoryEstimate(sizes, activation_bytes(configs, height, width, dtype, text_tokens, sizes), height, width,
                          _dtype_name(dtype), "configs (meta device)" if on_meta else "built modules")


def _dtype_name(dtype) -> str | None:
    return None if dtype is None else torch_dtype_name(dtype)


# -- activations -------------------------------------------------------------------------------------------------


def activation_bytes(configs: dict, height: int, width: int, dtype: torch.dtype | None, text_tokens: int,
                     sizes: dict | None = None) -> int:
    """Working memory of the largest stage at ``height`` x ``width``: a margin, not a measurement.

    Transformer: every token (image + text) carries the single blocks' fused projection (3 x inner + 2 x MLP
    hidden) plus ~8 residual-width tensors. VAE decode: ~8 full-resolution feature maps of its first block's
    channels. Text encoder: every layer's hidden states (FLUX.2 keeps them) plus the MLP intermediate. Components
    run one after another, so the largest counts, plus HEADROOM_BYTES. Attention is assumed to be a fused kernel
    (no S x S scores), as fluxlab's defaults on a GPU are.
    """
    item = 4 if dtype is None else torch.empty((), dtype=dtype).element_size()
    vae = configs.get("vae", {})
    levels = len(vae.get("block_out_channels", (128, 256, 512, 512)))
    scale = 2 ** (levels - 1) * 2  # the VAE's downscale, then 2x2 latent patches
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


# -- measured peak -----------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak accelerator memory torch allocated inside a ``with`` block (``torch.cuda.max_memory_allocated``,
    reset on entry). ``bytes`` is None on the CPU, where there is no such counter: ``label`` says "n/a on CPU"."""

    def __init__(self, device):
        self.device = torch.device(device if device is not None else "cpu")
        self.bytes: int | None = None

    @property
    def measured(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

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
