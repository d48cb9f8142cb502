"""What machine are we on? One object answers vendor, arch, versions and attention features; nothing else in
fluxlab inspects ``torch.version`` or device names. The vendor comes from ``torch.version.hip`` and the device
properties, never from ``device.type``: ROCm GPUs report "cuda"."""

from __future__ import annotations

import dataclasses
import functools
import platform as _host

import torch

VENDORS = ("nvidia", "amd", "cpu", "other")

_AMD_FP8_ARCHES = ("gfx942", "gfx950")  # AMD arches with hardware fp8 (MI300 series, MI350 series)


@dataclasses.dataclass(frozen=True)
class Platform:
    """A machine profile. Build one by hand (``Platform.h100()``) to test decisions for other machines."""

    vendor: str  # "nvidia" | "amd" | "cpu" | "other"
    arch: str | None  # "sm_90", "gfx942", or None on CPU
    device_name: str
    torch_version: str
    cuda_version: str | None = None
    hip_version: str | None = None
    cudnn_version: int | None = None
    cudnn_attention: bool = False  # cuDNN's fused attention is usable (NVIDIA sm_80+, cuDNN 9+)
    bf16: bool = True
    fp8: bool = False
    device_count: int = 0

    def __post_init__(self):
        if self.vendor not in VENDORS:
            raise ValueError(f"vendor must be one of {VENDORS}, got {self.vendor!r}")

    @property
    def is_gpu(self) -> bool:
        return self.vendor in ("nvidia", "amd")

    @property
    def torch_device_type(self) -> str:
        """The device type torch uses for tensors on this platform (ROCm GPUs are "cuda" too)."""
        return "cuda" if self.is_gpu else "cpu"

    @property
    def sm(self) -> int | None:
        """NVIDIA compute capability as an integer (90 for sm_90), else None."""
        if self.vendor == "nvidia" and self.arch and self.arch.startswith("sm_"):
            return int("".join(ch for ch in self.arch[3:] if ch.isdigit()))
        return None

    def describe(self) -> str:
        labelled = (("torch", self.torch_version), ("CUDA", self.cuda_version), ("HIP", self.hip_version),
                    ("cuDNN", self.cudnn_version))
        versions = [f"{label} {version}" for label, version in labelled if version]
        arch = f" ({self.arch})" if self.arch else ""
        return f"{self.vendor} {self.device_name}{arch}; " + ", ".join(versions)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    # Profiles for tests and what-if questions ("what would run on an MI300X?").
    @classmethod
    def h100(cls) -> Platform:
        return cls("nvidia", "sm_90", "NVIDIA H100 80GB HBM3", "2.11.0", cuda_version="13.0",
                   cudnn_version=91900, cudnn_attention=True, fp8=True, device_count=1)

    @classmethod
    def h200(cls) -> Platform:
        return dataclasses.replace(cls.h100(), device_name="NVIDIA H200")

    @classmethod
    def a100(cls) -> Platform:
        return dataclasses.replace(cls.h100(), arch="sm_80", device_name="NVIDIA A100-SXM4-80GB", fp8=False)

    @classmethod
    def mi300x(cls) -> Platform:
        # torch and HIP as environment-rocm.yml installs them (torch==2.11.0+rocm7.1); a test keeps the two in step.
        return cls("amd", "gfx942", "AMD Instinct MI300X", "2.11.0", hip_version="7.1", fp8=True, device_count=1)

    @classmethod
    def mi355x(cls) -> Platform:
        """gfx950 (MI350 series): the arch of aiter's MHA v4 MX kernels; torch/HIP as for the MI300X profile."""
        return dataclasses.replace(cls.mi300x(), arch="gfx950", device_name="AMD Instinct MI355X")

    @classmethod
    def cpu(cls) -> Platform:
        return cls("cpu", None, _host.processor() or _host.machine() or "cpu", torch.__version__)


def _detect() -> Platform:
    torch_version = torch.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        if torch.version.hip:  # ROCm: device.type is "cuda", but this is an AMD GPU.
            arch = getattr(props, "gcnArchName", "") .split(":")[0] or None
            return Platform("amd", arch, props.name, torch_version, hip_version=torch.version.hip,
                            cudnn_attention=False, bf16=True,
                            fp8=bool(arch and arch.startswith(_AMD_FP8_ARCHES)), device_count=count)
        if torch.version.cuda:
            sm = props.major * 10 + props.minor
            cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            return Platform("nvidia", f"sm_{sm}", props.name, torch_version,
                            cuda_version=torch.version.cuda, cudnn_version=cudnn,
                            cudnn_attention=bool(cudnn and cudnn >= 90000 and sm >= 80),
                            bf16=sm >= 80, fp8=sm >= 89, device_count=count)
        return Platform("other", None, props.name, torch_version, device_count=count)
    return Platform.cpu()


@functools.lru_cache(maxsize=1)
def current_platform() -> Platform:
    """The platform of this process's accelerator (or the CPU). Cached: the hardware does not change."""
    return _detect()


def platform_for_device(device: torch.device, machine: Platform | None = None) -> Platform:
    """The platform a tensor on ``device`` runs on: the CPU profile for CPU tensors, else the machine's (``meta``
    tensors, inputs without data, are judged as if on the machine's accelerator)."""
    machine = machine or current_platform()
    if device.type == "cpu" and machine.vendor != "cpu":
        return Platform.cpu()
    return machine


PROFILES = {"h100": Platform.h100, "h200": Platform.h200, "a100": Platform.a100, "mi300x": Platform.mi300x,
            "mi355x": Platform.mi355x, "cpu": Platform.cpu}
