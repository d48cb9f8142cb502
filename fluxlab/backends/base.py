"""The contract every attention backend follows, and the capability checks they share.

A backend is a function ``fn(q, k, v, *, scale, causal, return_lse, **options)`` taking and returning
``[batch, seq, heads, head_dim]`` tensors, plus its capabilities as data. When ``return_lse`` is true it
returns ``(out, lse)`` with ``lse`` the natural-log log-sum-exp, float32, ``[batch, heads, seq_q]``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from packaging.version import InvalidVersion, Version

from ..errors import BackendUnavailableError
from ..platform import Platform
from ..util import torch_dtype_name

FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
HALF_DTYPES = frozenset({torch.float16, torch.bfloat16})


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend can run, as data a reader can scan."""

    vendors: frozenset[str] = frozenset({"nvidia", "amd", "cpu"})
    # Arches per vendor, exact ("gfx942") or NVIDIA minimums ("sm_80+"); a vendor not listed: any arch.
    arches: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    dtypes: frozenset[torch.dtype] = FLOAT_DTYPES
    head_dims: tuple[int, ...] | None = None  # exact list, or None with min_head_dim..max_head_dim
    max_head_dim: int = 1024
    min_head_dim: int = 1  # smaller head dims: pad q/k/v (fluxlab.registry.register_padded)
    gqa: bool = True
    causal: bool = True
    returns_lse: bool = False
    lse_grad: bool = False  # the returned LSE carries a gradient (a loss may use it); else refused with grad inputs
    quantised: bool = False  # low-precision arithmetic inside (int8/fp8): judged against its own budget
    needs_cudnn_attention: bool = False
    experimental: bool = False
    stand_in_only: bool = False  # call contract proven on a stand-in (tests/standins) only, never run on hardware
    # A float32 emulation of another kernel's rounding points, never picked automatically; ``emulates``: its name.
    emulated: bool = False
    emulates: str | None = None


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A Python package a backend imports, with the command that installs it."""

    module: str  # import name, e.g. "flash_attn.cute"
    distribution: str  # for the version, e.g. "flash-attn-4"
    install: str  # e.g. "pip install 'flash-attn-4==4.0.0b36'"
    min_version: str | None = None
    # The one release the adapter (and its emulator) is written for: another is refused. A build without package
    # metadata (a source checkout) cannot be checked and is let through.
    exact_version: str | None = None

    def missing_reason(self) -> str | None:
        module = sys.modules.get(self.module)
        try:
            spec = module.__spec__ if module is not None else importlib.util.find_spec(self.module)
        except (ImportError, ValueError, AttributeError):  # a parent package missing or broken
            spec = None
        if spec is None:
            return f"Python package '{self.distribution}' (module {self.module}) is not installed: {self.install}"
        if spec.origin in (None, "namespace") and "." not in self.module:
            # e.g. FlashAttention-4 installs flash_attn/cute without flash_attn/__init__.py: the folder
            # exists as a namespace package (imported as soon as flash_attn.cute is), but FA2 is not there.
            return (f"only a namespace folder '{self.module}' exists (left by another package), not "
                    f"'{self.distribution}': {self.install}")
        have = self.version() if self.exact_version or self.min_version else None
        if have and self.exact_version and have != self.exact_version:
            return (f"'{self.distribution}' {have} is installed, but fluxlab's adapter is written for "
                    f"{self.exact_version} exactly (its call contract and numerics): {self.install}")
        if have and self.min_version and _older(have, self.min_version):
            return f"'{self.distribution}' {have} is installed but >= {self.min_version} is needed: {self.install}"
        return None

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None


def _older(have: str, need: str) -> bool:
    """PEP 440 comparison; a version string that is not PEP 440 counts as not older."""
    try:
        return Version(have) < Version(need)
    except InvalidVersion:
        return False


def arch_matches(platform: Platform, allowed: tuple[str, ...]) -> bool:
    """Arch rules are exact names ("gfx942") or NVIDIA minimums written "sm_80+"."""
    return any(platform.sm >= int(rule[3:-1]) if rule.endswith("+") and platform.sm is not None
               else platform.arch == rule for rule in allowed)


@dataclasses.dataclass
class Backend:
    """One attention kernel behind fluxlab's contract."""

    name: str
    fn: Callable[..., Any]
    caps: Capabilities
    description: str = ""
    requires: tuple[Requirement, ...] = ()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # tunables and their defaults
    extra_checks: Callable[..., list[str]] | None = None  # backend-specific reasons
    builtin: bool = True
    # option -> {valid value: what it means}; a spec with another value is refused when parsed.
    option_values: dict[str, dict[Any, str]] = dataclasses.field(default_factory=dict)
    # Returns the kernel with its library already imported (called once, when a plan is made); None: ``fn``.
    binder: Callable[[], Callable[..., Any]] | None = None
    # -- where the backend sits in fluxlab (the registry, priority lists and name maps are derived from these) --
    aliases: tuple[str, ...] = ()  # other names users type for it, e.g. "torch_sdpa"
    diffusers: tuple[str, ...] = ()  # diffusers' attention-backend names of the same kernel, e.g. "_native_flash"
    # Rank in the automatic choice per platform row, lower first: "vendor/arch" (e.g. "nvidia/sm_90") wins over
    # "vendor" (e.g. "nvidia"); a platform with no entry never picks it automatically.
    priority: Mapping[str, int] = dataclasses.field(default_factory=dict)
    groups: Mapping[str, int] = dataclasses.field(default_factory=dict)  # group name -> rank in it, e.g. {"fa": 3}
    flux2: bool = True  # a FLUX.2 model may use it (False only for a kernel that cannot serve FLUX.2's calls)
    plugin: str | None = None  # the distribution whose ``fluxlab.backends`` entry point declared it

    def rank(self, platform: Platform) -> int | None:
        """Its place in ``platform``'s automatic choice (lower first); None: never picked automatically there."""
        rank = self.priority.get(f"{platform.vendor}/{platform.arch}")
        return self.priority.get(platform.vendor) if rank is None else rank

    def runs_on(self, platform: Platform) -> bool:
        """The vendor and arch fit (packages and inputs aside)."""
        caps = self.caps
        return platform.vendor in caps.vendors and (platform.vendor not in caps.arches
                                                    or arch_matches(platform, caps.arches[platform.vendor]))

    def kernel(self) -> Callable[..., Any]:
        """The callable a plan runs: imports resolved now, so no call pays for them."""
        return self.binder() if self.binder is not None else self.fn

    @property
    def version(self) -> str | None:
        if self.requires:
            return self.requires[0].version()
        return torch.__version__.split("+")[0] if self.builtin else None

    def missing_packages(self) -> list[str]:
        return [reason for req in self.requires if (reason := req.missing_reason())]

    def platform_reasons(self, platform: Platform) -> list[str]:
        """Reasons that depend only on the machine and the installed packages."""
        caps = self.caps
        reasons = []
        if platform.vendor not in caps.vendors:
            reasons.append(f"{self.name} runs on {', '.join(sorted(caps.vendors))}, not on {platform.vendor} "
                           f"({platform.device_name})")
        elif platform.vendor in caps.arches and not arch_matches(platform, caps.arches[platform.vendor]):
            reasons.append(f"{self.name} needs arch {' or '.join(caps.arches[platform.vendor])} on "
                           f"{platform.vendor}; this device is {platform.arch}")
        if caps.needs_cudnn_attention and not platform.cudnn_attention and platform.vendor != "cpu":
            why = ("ROCm has no cuDNN" if platform.vendor == "amd"
                   else f"cuDNN {platform.cudnn_version} on {platform.arch} has no fused attention "
                        "(needs cuDNN 9 and sm_80+)")
            reasons.append(f"{self.name} needs cuDNN attention: {why}")
        reasons.extend(self.missing_packages())
        return reasons

    def input_reasons(self, q: torch.Tensor, k: torch.Tensor, platform: Platform, *,
                      causal: bool, return_lse: bool, lse_grad: bool = False) -> list[str]:
        """Reasons that depend on the inputs' dtype, head dim, device and the requested features."""
        caps = self.caps
        reasons = []
        if platform.is_gpu and q.device.type not in ("cuda", "meta"):
            reasons.append(f"inputs are on {q.device.type}; {self.name} runs on GPU tensors (move them with .cuda())")
        if not platform.is_gpu and q.device.type not in ("cpu", "meta"):
            reasons.append(f"inputs are on {q.device.type} but the platform is {platform.vendor}")
        if q.dtype not in caps.dtypes:
            names = ", ".join(sorted(torch_dtype_name(d) for d in caps.dtypes))
            reasons.append(f"dtype {torch_dtype_name(q.dtype)} is not supported by {self.name} (supports {names})")
        head_dim = q.shape[-1]
        if caps.head_dims is not None and head_dim not in caps.head_dims:
            reasons.append(f"head_dim {head_dim} is not supported by {self.name} "
                           f"(supports {', '.join(map(str, caps.head_dims))})")
        elif head_dim > caps.max_head_dim:
            reasons.append(f"head_dim {head_dim} exceeds {self.name}'s maximum of {caps.max_head_dim}")
        elif head_dim < caps.min_head_dim:
            reasons.append(f"head_dim {head_dim} is below {self.name}'s minimum of {caps.min_head_dim} (zero-pad "
                           f"q/k/v: fluxlab.registry.register_padded('{self.name}', {caps.min_head_dim}))")
        if q.shape[2] != k.shape[2] and not caps.gqa:
            reasons.append(f"{self.name} does not support grouped-query attention "
                           f"({q.shape[2]} query heads, {k.shape[2]} key/value heads)")
        if causal and not caps.causal:
            reasons.append(f"{self.name} does not support causal attention")
        if return_lse and not caps.returns_lse:
            reasons.append(f"{self.name} does not return the log-sum-exp (needed e.g. for ring attention)")
        elif return_lse and lse_grad and not caps.lse_grad:
            reasons.append(f"{self.name}'s log-sum-exp carries no gradient, and the inputs require grad: a loss "
                           "that uses the LSE would get a wrong q/k grad. Use backend='reference' (its LSE has a "
                           "backward), or detach the inputs / run under torch.no_grad()")
        if self.extra_checks is not None:
            reasons.extend(self.extra_checks(q, k, platform))
        return reasons

    def not_supported_reasons(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, platform: Platform, *,
                              causal: bool = False, return_lse: bool = False, lse_grad: bool = False) -> list[str]:
        """Every reason this backend cannot run these inputs on ``platform``; empty means it can.
        ``lse_grad``: the LSE is asked for and the inputs require grad (its backward must exist)."""
        return self.platform_reasons(platform) + self.input_reasons(q, k, platform, causal=causal,
                                                                    return_lse=return_lse, lse_grad=lse_grad)


@dataclasses.dataclass(frozen=True)
class Group:
    """A priority group such as ``fa``: a name that stands for its best member that can run the inputs. Members
    join it with ``Backend(groups={name: rank})``; the group has no kernel of its own."""

    name: str
    description: str
    caps: Capabilities  # what its members offer, for listings
    aliases: tuple[str, ...] = ()


def unbound(binder: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    """``Backend.fn`` for an adapter with a binder: binds on every call (a plan binds once, by ``kernel()``)."""
    def call(q, k, v, **kwargs):
        return binder()(q, k, v, **kwargs)
    return call


def split_lse(result, return_lse: bool, what: str = "the kernel"):
    """A library's result (a tensor, or a tuple starting ``out, lse``) as ``out`` or ``(out, float32 lse)``."""
    out, lse = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    if not return_lse:
        return out
    if lse is None:
        raise RuntimeError(f"{what} returned no log-sum-exp although it was requested")
    return out, lse.float()


def refuse_other_scale(scale: float, q: torch.Tensor, why: str, fix: str = "use another backend") -> None:
    """For kernels that always use ``head_dim ** -0.5``: another ``scale`` would be silently wrong."""
    if abs(scale - q.shape[-1] ** -0.5) > 1e-12 * scale:
        raise BackendUnavailableError(f"{why}: scale {scale:g} is not head_dim ** -0.5 = {q.shape[-1] ** -0.5:g} "
                                      f"and would be silently wrong; {fix}")


def import_first(*module_names: str):
    """Import the first module that exists (libraries move their entry points between releases)."""
    errors = []
    for name in module_names:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError("none of these modules could be imported: " + "; ".join(errors))
