"""Before launch: can this backend serve Ulysses or ring attention for these shapes? Every refusal is a sentence
naming the fix (ring needs the LSE, Ulysses divides the heads, diffusers' sharder divides every sequence input)."""

from __future__ import annotations

import dataclasses
import re

import torch

from .. import registry
from ..errors import ParallelRefusedError, UnknownBackendError
from ..platform import Platform, current_platform
from ..util import torch_dtype_name

MODES = ("ulysses", "ring")


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
    """How attention is split: ``ulysses`` ranks all-to-all over heads, ``ring`` ranks pass K/V around."""

    ulysses: int = 1
    ring: int = 1

    @classmethod
    def parse(cls, text: str | ParallelSpec) -> ParallelSpec:
        """``"ulysses=2"``, ``"ring=2"``, ``"ulysses=2,ring=2"`` (both: 4 ranks)."""
        if isinstance(text, ParallelSpec):
            return text
        degrees = {}
        for item in filter(None, str(text).replace(" ", "").split(",")):
            match = re.fullmatch(r"([a-z]+)=(\d+)", item.lower())
            if not match or match.group(1) not in MODES:
                raise ValueError(f"cannot read parallel mode {item!r} in {text!r}; write e.g. 'ulysses=2', 'ring=2' "
                                 "or 'ulysses=2,ring=2'")
            degrees[match.group(1)] = int(match.group(2))
        if not degrees:
            raise ValueError(f"no parallel mode in {text!r}; write e.g. 'ulysses=2' or 'ring=2'")
        return cls(**degrees)

    @property
    def degree(self) -> int:
        """Ranks the run needs (diffusers' mesh is ring x ulysses)."""
        return self.ulysses * self.ring

    @property
    def needs_lse(self) -> bool:
        return self.ring > 1

    def __str__(self):
        parts = [f"ulysses={self.ulysses}"] * (self.ulysses > 1) + [f"ring={self.ring}"] * (self.ring > 1)
        return ",".join(parts) or "single"


def _spec(mode: str | ParallelSpec, degree: int | None) -> ParallelSpec:
    if isinstance(mode, ParallelSpec) or "=" in str(mode):
        spec = ParallelSpec.parse(mode)
        if degree is not None and degree != spec.degree:
            raise ValueError(f"mode {mode!r} means {spec.degree} ranks, but degree={degree} was passed")
        return spec
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; choose one of {MODES} (or write 'ulysses=2,ring=2')")
    if degree is None:
        raise ValueError(f"mode {mode!r} needs a degree, e.g. check_parallel(backend, {mode!r}, 2, heads)")
    return ParallelSpec(**{mode: degree})


def lse_backends() -> list[str]:
    """Backends that return the log-sum-exp in fluxlab's convention (every one of them can serve ring)."""
    return [b.name for b in registry.all_backends() if b.caps.returns_lse]


def check_parallel(backend: str, mode: str | ParallelSpec, degree: int | None = None, heads: int | None = None, *,
                   head_dim: int | None = None, dtype: torch.dtype | None = None,
                   seq_lens: dict[str, int] | None = None, kv_heads: int | None = None, causal: bool = False,
                   mask: bool = False, dropout: float = 0.0, world_size: int | None = None,
                   platform: Platform | None = None, batch: int = 1) -> list[str]:
    """Every reason ``backend`` cannot serve ``mode`` (``"ulysses"``/``"ring"`` with ``degree``, or a spec such as
    ``"ulysses=2,ring=2"``) for a model with ``heads`` heads; empty means it can. ``seq_lens``: each sequence input
    diffusers splits, e.g. ``{"text": 512, "image": 16384}``; ``head_dim`` and ``dtype`` add the backend's own checks
    on each rank's share, on ``platform`` (default: this machine). The rules: docs/parallel.md."""
    spec = _spec(mode, degree)
    platform = platform or current_platform()
    reasons: list[str] = []
    if spec.degree < 2:
        reasons.append(f"{spec} runs on one rank; give a degree of 2 or more (e.g. 'ulysses=2')")
    try:
        chosen = registry.get_backend(str(backend).partition(":")[0])
    except UnknownBackendError as exc:
        return reasons + [str(exc)]

    if spec.needs_lse and not chosen.caps.returns_lse:
        here = [name for name in lse_backends() if not registry.get_backend(name).platform_reasons(platform)]
        reasons.append(
            f"ring attention merges partial results with the log-sum-exp; '{chosen.name}' does not return it — "
            f"choose one of: {', '.join(lse_backends())}"
            + (f" (runnable on this machine: {', '.join(here)})" if here else "")
            + ". Ulysses needs no log-sum-exp, so 'ulysses=...' can use it.")
    if heads is not None and spec.ulysses > 1 and heads % spec.ulysses:
        divisors = ", ".join(str(d) for d in range(2, heads + 1) if heads % d == 0)
        reasons.append(f"Ulysses gives each rank heads/degree heads: {heads} heads do not divide by ulysses degree "
                       f"{spec.ulysses}; choose a Ulysses degree among {divisors}, or ring (which splits the sequence, "
                       "not the heads)")
    if kv_heads is not None and heads is not None and kv_heads != heads:
        reasons.append(f"diffusers' context-parallel templates do not support grouped-query attention "
                       f"({heads} query heads, {kv_heads} key/value heads)")
    reasons += sequence_reasons(spec, seq_lens)
    reasons += [text for refused, text in (
        (causal, "diffusers' Ulysses/ring templates refuse causal attention (FLUX.2 is non-causal)"),
        (mask, "fluxlab's backends take no attention mask (FLUX.2 pipelines pass none): drop "
               "attention_kwargs={'attention_mask': ...}"),
        (dropout, f"fluxlab's parallel attention is inference-only: dropout {dropout} must be 0")) if refused]
    if world_size is not None and world_size != spec.degree:
        reasons.append(f"{spec} needs exactly {spec.degree} ranks; this job has {world_size}: launch with "
                       f"torchrun --nproc_per_node {spec.degree}")
    if platform.is_gpu and platform.device_count and platform.device_count < spec.degree:
        reasons.append(f"{spec} needs {spec.degree} GPUs (one per rank); this machine has {platform.device_count}")

    platform_reasons = chosen.platform_reasons(platform)
    reasons += [f"'{chosen.name}' cannot run here: {r}" for r in platform_reasons]
    if not platform_reasons and heads is not None and head_dim is not None and dtype is not None:
        # the q each rank's kernel sees: Ulysses has all tokens and heads/u, ring tokens/r and its heads
        rank_heads, total = max(1, heads // spec.ulysses), sum((seq_lens or {}).values())
        q = torch.empty((batch, (total or 4608) // spec.ring, rank_heads, head_dim), dtype=dtype, device="meta")
        seq = str(total // spec.ring) if total else ("seq" if spec.ring == 1 else f"seq/{spec.ring}")
        share = f"[{batch}, {seq}, {rank_heads}, {head_dim}]"
        # the LSE rule is judged above with its own message; here only shape/dtype/arch reasons
        reasons += [f"'{chosen.name}' cannot run each rank's share (q {share}, {torch_dtype_name(dtype)}): {r}"
                    for r in chosen.input_reasons(q, q, platform, causal=False, return_lse=False)]
    return reasons


def sequence_reasons(spec: ParallelSpec, seq_lens: dict[str, int] | None) -> list[str]:
    """Sequence inputs (e.g. ``{"text": 512, "image": 16384}``) that do not split evenly over ``spec``'s ranks."""
    reasons = []
    seq_lens = seq_lens or {}
    for name, length in seq_lens.items():
        if length % spec.degree:
            common = [d for d in range(2, 65) if all(n % d == 0 for n in seq_lens.values())]
            reasons.append(
                f"the {name} sequence ({length} tokens) does not divide by the {spec.degree} ranks: diffusers splits "
                f"each sequence input evenly and does not pad (its sharder asserts); degrees that divide every "
                f"input: {', '.join(map(str, common)) or 'none up to 64'}"
                + (" — or change the image size / max_sequence_length" if name in ("text", "image") else ""))
    return reasons


def require_parallel(backend: str, mode: str | ParallelSpec, degree: int | None = None, heads: int | None = None,
                     **kwargs) -> None:
    """``check_parallel``, raising :class:`ParallelRefusedError` with every reason if there is one."""
    reasons = check_parallel(backend, mode, degree, heads, **kwargs)
    if reasons:
        spec = _spec(mode, degree)
        raise ParallelRefusedError(reasons, f"{spec} with backend '{backend}'")
