"""Inputs for comparisons: synthetic FLUX-shaped q/k/v in three distributions, or captured records.
``default_inputs()`` sizes the set for the machine: the real FLUX.2 shapes on a GPU, small ones on CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

import torch

from ..errors import InvalidInputError
from ..record import AttentionRecord
from ..util import torch_dtype_name

# Per distribution: how q, k, v are drawn (all start from standard normal).
DISTRIBUTIONS = {
    "normal": "q, k, v ~ N(0, 1): broad attention (entropy close to log S)",
    "outliers": ("4 of the head_dim channels of q and k carry a large shared offset (6 + 3 N(0,1)), as post-norm "
                 "q/k of real DiTs do, and 4 channels of v are 20x larger: low-entropy attention and large "
                 "outputs, where rounding the scores to bf16 hurts"),
    "peaky": ("a quarter of the keys are aligned with one query each (k_j += q_i): those queries attend almost "
              "one-hot (logit ~ sqrt(D) above the rest), the rest broadly"),
}
OUTLIER_CHANNELS, OUTLIER_OFFSET, OUTLIER_SPREAD, V_OUTLIER_GAIN = 4, 6.0, 3.0, 20.0
PEAKY_FRACTION = 0.25

# FLUX.2 [dev]: 512 text + 4096 image tokens at 1024^2 (S 4608), 512 + 16384 at 2048^2 (S 16896), D 128.
FLUX_TEXT_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A synthetic input, described; ``materialise`` draws the tensors (text tokens first, as in FLUX)."""

    seq: int
    heads: int
    head_dim: int = 128
    distribution: str = "normal"
    text_tokens: int | None = None  # None: S/9 (FLUX's 512 text tokens of 4608)
    batch: int = 1

    def __post_init__(self):
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; choose one of {sorted(DISTRIBUTIONS)}")

    @property
    def name(self) -> str:
        batch = f"B{self.batch} " if self.batch != 1 else ""
        return f"{self.distribution} {batch}S{self.seq} H{self.heads} D{self.head_dim}"

    def materialise(self, dtype: torch.dtype, seed: int, device="cpu") -> AttentionCase:
        q, k, v = synthetic_qkv(self.batch, self.seq, self.heads, self.head_dim, self.distribution, seed)
        text = self.text_tokens if self.text_tokens is not None else self.seq // 9
        return AttentionCase(name=self.name, q=q.to(device=device, dtype=dtype), k=k.to(device=device, dtype=dtype),
                             v=v.to(device=device, dtype=dtype), scale=1.0 / math.sqrt(self.head_dim),
                             text_tokens=text, seed=seed, distribution=self.distribution, source="synthetic")


@dataclasses.dataclass
class AttentionCase:
    """One set of q/k/v to compare on, with what was recorded for it (if it came from a capture)."""

    name: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    causal: bool = False
    text_tokens: int | None = None
    seed: int | None = None
    distribution: str | None = None
    source: str = "synthetic"  # "synthetic" | "record"
    recorded_out: torch.Tensor | None = None
    recorded_lse: torch.Tensor | None = None
    recorded_backend: str | None = None
    recorded_on: str | None = None  # the machine the record came from, e.g. "amd AMD Instinct MI300X"

    @property
    def dtype_name(self) -> str:
        return torch_dtype_name(self.q.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)


def synthetic_qkv(batch, seq, heads, head_dim, distribution="normal", seed=0):
    """Float32 q, k, v ``[B, S, H, D]`` drawn from ``distribution`` (see DISTRIBUTIONS); reproducible by seed."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, seq, heads, head_dim, generator=gen) for _ in range(3))
    if distribution == "outliers":
        channels = torch.randperm(head_dim, generator=gen)[:OUTLIER_CHANNELS]
        q[..., channels] = q[..., channels] * OUTLIER_SPREAD + OUTLIER_OFFSET
        k[..., channels] = k[..., channels] * OUTLIER_SPREAD + OUTLIER_OFFSET
        v[..., torch.randperm(head_dim, generator=gen)[:OUTLIER_CHANNELS]] *= V_OUTLIER_GAIN
    elif distribution == "peaky":
        aligned = max(1, int(seq * PEAKY_FRACTION))
        keys = torch.randperm(seq, generator=gen)[:aligned]
        k[:, keys] += q[:, :aligned]
    elif distribution != "normal":
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {sorted(DISTRIBUTIONS)}")
    return q, k, v


# The default sets, built to expose shape bugs as well as numerics: a sequence length that is not a multiple of
# 64 or 128 (a kernel that drops or misreads the ragged tail of keys), batch > 1 with different content per element
# (a kernel that mixes batch elements up), and FLUX's text + image split (text tokens first).
# GPU: the FLUX.2 shapes; 3537 = 512 text + 55 x 55 image tokens (880^2), tail of 81 keys past 27 x 128, batch 2.
FLUX_INPUTS = (
    *(InputSpec(4608, 24, distribution=d, text_tokens=FLUX_TEXT_TOKENS) for d in DISTRIBUTIONS),
    InputSpec(3537, 24, distribution="normal", text_tokens=FLUX_TEXT_TOKENS, batch=2),
    InputSpec(4608, 48, distribution="normal", text_tokens=FLUX_TEXT_TOKENS),
    InputSpec(16896, 48, distribution="normal", text_tokens=FLUX_TEXT_TOKENS),
)
# CPU (2 cores): 4 heads, S 520-1000 (S 1000 = 104 text + 896 image tokens: a tail of 104 keys past 7 x 128, of
# 40 past 15 x 64), about as much work as a single S 1024 set; the whole sweep with float64 takes seconds.
CPU_INPUTS = (
    InputSpec(1000, 4, distribution="normal", text_tokens=104, batch=2),
    InputSpec(1000, 4, distribution="outliers", text_tokens=104),
    InputSpec(520, 4, distribution="peaky", text_tokens=56, batch=2),
)

SMOKE_INPUTS = tuple(InputSpec(192, 2, 64, distribution=d) for d in DISTRIBUTIONS)  # seconds, for checks


def default_inputs(device_type: str | None = None) -> tuple[InputSpec, ...]:
    """The synthetic set for this machine: FLUX shapes on a GPU, CPU_INPUTS on CPU."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return FLUX_INPUTS if device_type == "cuda" else CPU_INPUTS


def record_case(record: AttentionRecord, index: int = 0, recorded_on: str | None = None) -> AttentionCase:
    """A record as a comparison case, validated as a live ``fluxlab.attention`` call would be (InvalidInputError):
    a scale of -5 or NaN, or shapes that do not fit, are refused instead of compared and judged "pass"."""
    name = record.name if record.layer else f"record{index}"
    try:
        record.validate()
    except InvalidInputError as exc:
        raise InvalidInputError(f"record {index} ({name}) is not a valid attention call: {exc}") from None
    return AttentionCase(name=name, q=record.q, k=record.k, v=record.v, scale=float(record.scale),
                         causal=record.causal, text_tokens=record.text_tokens, source="record",
                         recorded_out=record.out, recorded_lse=record.lse, recorded_backend=record.backend,
                         recorded_on=recorded_on or record.meta.get("recorded_on"))


def iter_cases(inputs, dtypes: Iterable[torch.dtype], seeds: Iterable[int], device) -> Iterator[AttentionCase]:
    """Materialise inputs one at a time (so GPU memory holds one case): specs per dtype and seed, records as
    they are (their own dtype)."""
    for index, item in enumerate(inputs):
        if isinstance(item, InputSpec):
            for dtype in dtypes:
                for seed in seeds:
                    yield item.materialise(dtype, seed, device)
        elif isinstance(item, AttentionRecord):
            yield record_case(item, index)
        elif isinstance(item, AttentionCase):
            yield item
        else:
            raise TypeError(f"inputs[{index}] is a {type(item).__name__}; compare_attention takes InputSpec, "
                            "AttentionRecord or AttentionCase items (or a path saved by save_records)")


def count_cases(inputs, n_dtypes: int, n_seeds: int) -> int:
    return sum(n_dtypes * n_seeds if isinstance(item, InputSpec) else 1 for item in inputs)
