"""Is a backend's log-sum-exp the one ring attention merges with (natural log, float32, ``[B, H, S]``)? A kernel
whose output is exact but whose LSE is off is right on one device and wrong on N; a small probe against float64
names the closest known mistake (base 2, unscaled logits, heads rolled, ``[B, S, H]``)."""

from __future__ import annotations

import dataclasses
import math

import torch

from ..compare.tolerances import LSE_TOLERANCE
from ..errors import LseWarning
from ..util import torch_dtype_name

PROBE_SHAPE = (1, 32, 3, 16)  # [B, S, H, D]: 3 heads, so a roll of the heads is visible in either direction


@dataclasses.dataclass(frozen=True)
class LseCheck:
    """``ok``: the LSE follows the contract; ``problem``: what is wrong with it (None when ok)."""

    backend: str
    ok: bool
    max_abs: float  # vs the float64 natural-log LSE; inf when the shape is wrong
    tolerance: float
    problem: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"natural-log LSE, max abs {self.max_abs:.1e} vs float64 (<= {self.tolerance:g})"
        return self.problem or "LSE off"


def _candidates(q, k, scale) -> dict[str, torch.Tensor]:
    """The float64 ``[B, H, S]`` LSE under the contract and under each known mistake."""
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double())
    right = torch.logsumexp(logits * scale, dim=-1)
    heads = right.shape[1]
    return {"": right,
            "is in base 2 (log2 units); the contract is the natural log": right / math.log(2),
            "is computed from the unscaled logits (the softmax scale is missing)": torch.logsumexp(logits, dim=-1),
            **{f"has the heads rolled by {shift} (head h carries head h-{shift}'s value, modulo {heads})":
               right.roll(shift, dims=1) for shift in range(1, heads)}}


def check_lse(backend: str, *, device="cpu", dtype: torch.dtype = torch.float32, head_dim: int | None = None,
              seed: int = 0) -> LseCheck:
    """Run ``backend`` with ``return_lse=True`` on a small probe (``head_dim``: the model's, so the kernel takes it)
    and judge its LSE against float64."""
    from ..dispatch import attention

    b, s, h, d = PROBE_SHAPE[:3] + (head_dim or PROBE_SHAPE[3],)
    generator = torch.Generator("cpu").manual_seed(seed)
    q, k, v = (torch.randn((b, s, h, d), generator=generator).to(device, dtype) for _ in range(3))
    scale = d ** -0.5
    tolerance = LSE_TOLERANCE.get(torch_dtype_name(dtype), LSE_TOLERANCE["float32"]).pass_max_abs
    _, lse = attention(q, k, v, backend=backend, scale=scale, return_lse=True)
    if tuple(lse.shape) != (b, h, s):
        layout = " (that is [B, S, H], the layout diffusers merges with; fluxlab's contract is [B, H, S])" if tuple(
            lse.shape) == (b, s, h) else ""
        return LseCheck(backend, False, math.inf, tolerance,
                        f"its LSE has shape {list(lse.shape)}, expected [B, H, S] = {[b, h, s]}{layout}")
    lse = lse.detach().double().cpu()
    errors = {what: (lse - ref.cpu()).abs().max().item() for what, ref in _candidates(q, k, scale).items()}
    if errors[""] <= tolerance:
        return LseCheck(backend, True, errors[""], tolerance)
    what, err = min(((w, e) for w, e in errors.items() if w), key=lambda item: item[1])
    if err <= tolerance:
        problem = f"its LSE {what} (max abs {errors['']:.2g} from the natural-log LSE; {err:.1e} from that mistake)"
    else:
        problem = (f"its LSE is off by max abs {errors['']:.2g} from the float64 natural-log LSE "
                   f"(tolerance {tolerance:g})")
    return LseCheck(backend, False, errors[""], tolerance, problem)


def ring_reason(check: LseCheck) -> str:
    """The sentence a failed ring verdict carries when the backend's LSE is off."""
    return (f"the ring merge depends on the LSE (each hop's partial output is weighted by exp(lse_hop - lse_total)); "
            f"'{check.backend}': {check.problem}. On one device the output does not use the LSE, so it looks right "
            "there; fix the kernel's LSE, or run it under 'ulysses=N', which needs none")


def probe(backend: str, device, dtype: torch.dtype, head_dim: int | None = None) -> LseCheck | None:
    """``check_lse``, or None where the probe itself cannot run (a diagnosis only: no verdict depends on it)."""
    try:
        return check_lse(backend, device=device, dtype=dtype, head_dim=head_dim)
    except Exception:  # noqa: BLE001 - e.g. a kernel that refuses the probe's shape
        return None
