"""Where a FLUX.2 pipeline's weights live: all on the accelerator, or offloaded to host memory with accelerate.

``plan_offload`` decides from a :class:`~fluxlab.models.memory.MemoryEstimate` and the free accelerator memory
(before any weight loads) and refuses what cannot fit; ``apply_offload`` places a built pipeline as planned.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch

from .._compat import moved
from ..errors import MemoryBudgetError, OffloadError
from .memory import MemoryEstimate, gib

OFFLOAD_MODES = (None, "model", "sequential", "auto")
log = logging.getLogger("fluxlab")


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
        return {"requested": self.requested, "mode": self.mode, "device": self.device, "reason": self.reason,
                "budget_bytes": self.budget_bytes, "peak_estimate_bytes": self.peak_estimate_bytes,
                "estimate": None if self.estimate is None else self.estimate.as_dict()}


def check_offload(offload) -> None:
    if offload not in OFFLOAD_MODES:
        raise OffloadError(f"offload={offload!r} is not one of None, 'model', 'sequential', 'auto'. 'model' keeps one "
                           "component at a time on the accelerator, 'sequential' one layer at a time (slowest, least "
                           "memory), 'auto' picks from free memory and the pipeline's size.")


def default_accelerator() -> torch.device | None:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None


def resolve_device(offload, device) -> torch.device | None:
    """The device the pipeline will run on; refuses offloading where there is no accelerator."""
    check_offload(offload)
    target = torch.device(device) if device is not None else None
    if offload in ("model", "sequential"):
        target = target if target is not None else default_accelerator()
        if target is None or target.type == "cpu":
            raise OffloadError(
                f"offload={offload!r} keeps weights in host memory and moves them to an accelerator when they run; "
                f"{'device=' + repr(str(target)) + ' is the CPU' if target is not None else 'this machine has none'}"
                ". On the CPU use offload=None (or 'auto', which means none there).")
    elif offload == "auto" and target is None:
        target = default_accelerator()
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


Budget = int | Callable[[torch.device], int] | None


def budget_for(device: torch.device | None, memory_budget: Budget) -> int | None:
    """The memory budget in bytes: given (a number, or a function of the device), measured on an accelerator, or
    None on the CPU (no check there unless a budget is given)."""
    if callable(memory_budget):
        return int(memory_budget(device))
    if memory_budget is not None:
        return int(memory_budget)
    if device is not None and device.type == "cuda":
        return free_accelerator_memory(device)
    return None


def plan_offload(estimate: MemoryEstimate | None, offload, device, memory_budget: Budget = None) -> OffloadDecision:
    """Choose where the weights live, before loading them; raise MemoryBudgetError if the run cannot fit."""
    target = resolve_device(offload, device)
    where = str(target) if target is not None else None
    on_accelerator = target is not None and target.type != "cpu"
    if offload == "auto" and not on_accelerator:
        return OffloadDecision("auto", None, where, "no accelerator here, so no offload: the pipeline runs on the CPU",
                           estimate, budget_for(target, memory_budget))
    budget = budget_for(target, memory_budget)
    if offload == "auto" and estimate is None:  # size unknown (an unusual config): the safe choice
        return OffloadDecision("auto", "model", where, "no memory estimate for this pipeline, so model offload (one "
                           "component on the accelerator at a time)", None, budget)
    if estimate is None or budget is None:
        why = ("no offload asked: the pipeline stays on " + (where or "the CPU, where it is built") if offload is None
               else f"as asked ({'no memory budget on the CPU' if budget is None else 'no estimate'} to check)")
        return OffloadDecision(offload, offload, where, why, estimate, budget)
    need = {mode: estimate.peak_bytes(mode) for mode in (None, "model", "sequential")}
    have = f"{gib(budget)} free on {where or 'the CPU'}"
    if offload == "auto":
        for mode, how in ((None, "everything stays on the device"),
                          ("model", f"one component at a time (largest: {estimate.largest_component.name} "
                                    f"{gib(estimate.largest_component.weight_bytes)})"),
                          ("sequential", "one module at a time (slow: weights cross the bus every step)")):
            if need[mode] <= budget:
                reason = f"needs ~{gib(need[mode])} with offload={mode!r}, {how}; {have}"
                plan = OffloadDecision("auto", mode, where, reason, estimate, budget)
                log.info("fluxlab.load_flux2: %s", plan)
                return plan
        plan = OffloadDecision("auto", None, where, "does not fit", estimate, budget)
        raise MemoryBudgetError(
            f"this pipeline cannot run on {where} even offloaded: {estimate.describe()}; with sequential offload it "
            f"still needs ~{gib(need['sequential'])} at once, and {have}. Use a smaller image, a GPU with more "
            "memory, or free memory held by other pipelines.", plan)
    if need[offload] > budget:
        fits = [m for m in (None, "model", "sequential") if need[m] <= budget]
        if not on_accelerator:
            hint = "use a smaller image or a machine with more memory"
        elif fits:
            hint = f"offload={fits[0]!r} fits (~{gib(need[fits[0]])}), or offload='auto' picks it"
        else:
            hint = "nothing fits, even sequential offload: use a smaller image or a GPU with more memory"
        plan = OffloadDecision(offload, offload, where, "does not fit", estimate, budget)
        raise MemoryBudgetError(
            f"refused before loading: with offload={offload!r} this pipeline needs ~{gib(need[offload])} on "
            f"{where or 'the CPU'} ({estimate.describe()}), and {have}. {hint}.", plan)
    return OffloadDecision(offload, offload, where, f"as asked: needs ~{gib(need[offload])}; {have}", estimate, budget)


def apply_offload(pipe, plan: OffloadDecision):
    """Place ``pipe`` as planned: ``.to(device)``, or diffusers' model / sequential CPU offload (accelerate)."""
    if plan.mode is None:
        if plan.device is not None:
            pipe.to(plan.device)
    elif plan.mode == "model":
        pipe.enable_model_cpu_offload(device=plan.device)
    else:
        pipe.enable_sequential_cpu_offload(device=plan.device)
    pipe.fluxlab_offload = plan
    return pipe


def execution_device(pipe) -> torch.device:
    """Where ``pipe``'s models run: the accelerator for an offloaded pipeline (its weights rest on the CPU)."""
    device = getattr(pipe, "_execution_device", None)
    return torch.device(device) if device is not None else pipe.transformer.device


__getattr__ = moved(__name__, {"OffloadPlan": "fluxlab.models.offload:OffloadDecision"})
