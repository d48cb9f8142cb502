"""Step-level confirmation for autotune: per-layer wins measured in isolation need not add up in a whole step, so
the real transformer step is timed under each plan variant, interleaved, and the fastest that passes is kept."""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from typing import Callable

import torch

from .. import registry
from ..choice import BackendChoice
from ..compare.bands import is_approximate
from ..models.attach import set_schedule, state_of
from ..models.schedule import Schedule
from ..results import format_cell, markdown_table
from ..util import json_safe
from .files import check_count
from .runs import DecideInputError

PER_LAYER, AUTOMATIC = "per-layer plan", "automatic pick"


@dataclasses.dataclass
class StepTiming:
    """One plan variant's whole-step times (ms, one per round) and, per round, its ratio to the automatic pick."""

    variant: str  # "per-layer plan", "automatic pick" or "uniform <backend>"
    kernels: dict[str, int]  # backend -> number of layers it runs on
    times_ms: list[float] = dataclasses.field(default_factory=list)
    ratios: list[float] = dataclasses.field(default_factory=list)  # to the automatic pick's time in the same round
    eligible: bool = True  # every layer's kernel passed its verdict there (a failing one is never kept)
    attention_ms: float = math.nan  # the sum of its per-layer times measured in isolation
    note: str = ""
    same_as: list[str] = dataclasses.field(default_factory=list)  # variants with these very kernels (timed once)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else math.nan

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else math.nan

    @property
    def spread_ms(self) -> tuple[float, float]:
        return (min(self.times_ms), max(self.times_ms)) if self.times_ms else (math.nan, math.nan)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "median_ms": self.median_ms, "median_ratio": self.median_ratio}


@dataclasses.dataclass
class Confirmation:
    """Every variant's step timings, which variant was kept, and why (``AutotuneResult.confirmation``)."""

    timings: list[StepTiming]
    kept: str
    decision: str
    per_layer_choices: dict[str, str]  # the per-layer plan as chosen before the confirmation
    rounds: int
    warmup: int

    def timing(self, variant: str) -> StepTiming:
        return next(t for t in self.timings if variant == t.variant or variant in t.same_as)

    def to_markdown(self) -> str:
        rows = []
        for t in self.timings:
            name = t.variant + "".join(f" = {other}" for other in t.same_as)
            low, high = t.spread_ms
            rows.append({
                "variant": f"**{name}** (kept)" if self.kept in (t.variant, *t.same_as) else name,
                "kernels (layers)": ", ".join(f"{b} x{n}" for b, n in t.kernels.items()),
                "per-layer times in isolation, summed (ms)": t.attention_ms, "step median (ms)": t.median_ms,
                "[min, max]": f"[{format_cell(low)}, {format_cell(high)}]", "vs automatic": t.median_ratio,
                "eligible": "yes" if t.eligible else f"no: {t.note}"})
        return (f"Step-level confirmation: the real transformer step (the captured inputs) under each variant, "
                f"{self.warmup} warm-up call(s) each, then {self.rounds} rounds with every variant once per round "
                "(order rotated each round); times in ms, median and [min, max]; ratio: median over rounds of the "
                f"variant's time over the automatic pick's in the same round.\n\n{markdown_table(rows)}\n"
                f"Decision: {self.decision}\n")

    def as_dict(self) -> dict:
        return {"timings": [json_safe(t.as_dict()) for t in self.timings], "kept": self.kept, "decision": self.decision,
                "per_layer_choices": self.per_layer_choices, "rounds": self.rounds, "warmup": self.warmup}

    @classmethod
    def from_dict(cls, data: dict) -> Confirmation:
        fields = {f.name for f in dataclasses.fields(StepTiming)}
        timings = [StepTiming(**{k: (math.nan if v is None and k == "attention_ms" else v)
                                 for k, v in t.items() if k in fields}) for t in data["timings"]]
        return cls(timings, data["kept"], data["decision"], dict(data["per_layer_choices"]), data["rounds"],
                   data["warmup"])


# -- the step to time ----------------------------------------------------------------------------------------------


class StepReplay:
    """The transformer forwards of one denoising step, recorded during a generation; calling it runs them again."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self):
        if not self.calls:
            raise DecideInputError("no transformer forward was recorded at the chosen step, so there is no step to "
                                   "time; record one with `with record_step(pipe, step, steps) as replay: pipe(...)`")
        with torch.no_grad():
            return [self.transformer(*args, **kwargs) for args, kwargs in self.calls]


class record_step:  # noqa: N801 (a context manager used like a function)
    """``with record_step(pipe, step, steps) as replay: pipe(...)`` keeps (copies of) the transformer's inputs at
    denoising ``step`` (negative from the end); ``replay()`` then runs that step's forwards again."""

    def __init__(self, pipe, step: int, steps: int):
        self._state = state_of(pipe)
        self._step = step % steps
        self.replay = StepReplay(self._state.transformer)
        self._handle = None

    def _keep(self, module, args, kwargs):
        if self._state.position.step == self._step:  # fluxlab's own pre-hook (installed first) has just set it
            self.replay.calls.append((_copied(args), _copied(kwargs)))

    def __enter__(self) -> StepReplay:
        self._handle = self._state.transformer.register_forward_pre_hook(self._keep, with_kwargs=True)
        return self.replay

    def __exit__(self, *exc):
        self._handle.remove()
        return False


def _copied(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    return value


def wall_clock(device) -> Callable:
    """The default timer: one call's wall time in ms, the device synchronised before and after."""
    from ..util import time_calls

    def timer(variant: StepTiming, run: Callable[[], object]) -> float:
        return time_calls(run, warmup=0, repeats=1, device=device).times_ms[0]

    return timer


# -- variants, timing, decision ------------------------------------------------------------------------------------


def approximate(spec: str) -> bool:
    """Whether a backend spec (a name, or "name:option=value") names a quantised or emulated kernel."""
    return is_approximate(registry.get_backend(BackendChoice.parse(spec).name))


def _variants(plan, uniform: int | None) -> list[tuple[str, dict[str, str], bool, str]]:
    """(name, layer -> backend, eligible, note) for the per-layer plan, the automatic pick and uniform candidates."""
    layers = list(plan.automatic)
    passing = collections.defaultdict(set)  # layer -> the backends judged pass there with a finite time
    for m in plan.measurements:
        if m.verdict == "pass" and math.isfinite(m.time_ms):
            passing[m.layer].add(m.backend)
    per_layer = {layer: plan.choices.get(layer, plan.automatic[layer]) for layer in layers}
    variants = [(PER_LAYER, per_layer, True, "")]
    bad = [f"{layer} ({backend})" for layer, backend in plan.automatic.items()
           if backend not in passing[layer] or approximate(backend)]
    variants.append((AUTOMATIC, dict(plan.automatic), not bad,
                     "" if not bad else f"not judged pass (or quantised) on {len(bad)} layer(s), e.g. {bad[0]}"))
    everywhere = [b for b in dict.fromkeys(m.backend for m in plan.measurements)
                  if all(b in passing[layer] for layer in layers) and not approximate(b)]
    everywhere.sort(key=lambda b: _attention_ms(plan, {layer: b for layer in layers}))
    for backend in everywhere[:uniform]:
        variants.append((f"uniform {backend}", {layer: backend for layer in layers}, True, ""))
    left = everywhere[uniform:] if uniform is not None else []
    if left:
        plan.notes.append(f"not timed at step level (confirm_uniform={uniform}; their summed per-layer times were "
                          f"the largest): uniform {', '.join(left)}")
    return variants


def _attention_ms(plan, choices: dict[str, str]) -> float:
    times = {(m.layer, m.backend): m.time_ms for m in plan.measurements}
    return sum(times.get((layer, backend), math.nan) for layer, backend in choices.items())


def confirm_plan(plan, model, run_step: Callable[[], object], *, rounds: int = 5, warmup: int = 1,
                 uniform: int | None = 3, timer: Callable | None = None) -> Confirmation:
    """Time ``run_step`` (one real transformer step of ``model``) under the per-layer plan, the automatic pick and
    each candidate that passes on every layer applied uniformly (the ``uniform`` fastest by summed per-layer time;
    None: all), and keep the winner (``_winner``): ``plan.choices``, ``reasons`` and ``notes`` follow it, and
    ``plan.confirmation`` (returned) says why. ``warmup`` untimed calls per variant, then ``rounds`` rounds calling
    every variant once, the order rotated; ``timer(variant, run) -> ms`` replaces the wall clock.
    """
    check_count(rounds, f"confirm_rounds={rounds!r} must be a positive number of rounds (or confirm=False)")
    check_count(warmup, f"warm-up calls {warmup!r} must be 0 or more", minimum=0)
    if uniform is not None:
        check_count(uniform, f"confirm_uniform={uniform!r} must be 0 or more candidates (None: every one)", minimum=0)
    state = state_of(model)
    if timer is None:
        timer = wall_clock(next(state.transformer.parameters()).device)
    timings, schedules = [], []
    for name, choices, eligible, note in _variants(plan, uniform):
        twin = next((i for i, s in enumerate(schedules) if s[1] == choices), None)
        if twin is not None:
            timings[twin].same_as.append(name)
            timings[twin].eligible = timings[twin].eligible or eligible
            continue
        timings.append(StepTiming(name, dict(collections.Counter(choices.values())), eligible=eligible,
                                  attention_ms=_attention_ms(plan, choices), note=note))
        schedules.append((None if name == AUTOMATIC else Schedule.by_layer(choices), choices))
    per_layer_choices = dict(plan.choices)
    if len(timings) < 2:
        plan.confirmation = Confirmation(timings, PER_LAYER, "every variant runs the same kernel on every layer: "
                                         "nothing to confirm, so no step was timed", per_layer_choices, 0, 0)
        return plan.confirmation
    automatic = next(i for i, t in enumerate(timings) if AUTOMATIC in (t.variant, *t.same_as))
    saved = state.schedule
    try:
        for i in range(len(timings)):
            set_schedule(model, schedules[i][0])
            for _ in range(warmup):
                run_step()
        for r in range(rounds):
            order = [(r + i) % len(timings) for i in range(len(timings))]
            times = {}
            for i in order:
                set_schedule(model, schedules[i][0])
                times[i] = _checked(timer(timings[i], run_step), timings[i].variant)
            for i in order:
                timings[i].times_ms.append(times[i])
                timings[i].ratios.append(times[i] / times[automatic])
    finally:
        state.schedule = saved
        state._parsed.clear()
    winner = _winner(timings, timings[automatic])
    plan.confirmation = Confirmation(timings, winner.variant, "", per_layer_choices, rounds, warmup)
    _apply(plan, winner, schedules[timings.index(winner)][1])
    return plan.confirmation


def _winner(timings: list[StepTiming], automatic: StepTiming) -> StepTiming:
    """The eligible variant with the lowest median ratio to the automatic pick; but an eligible automatic pick is
    left only for a variant that beat it in every round. A switch must be faster beyond run-to-run noise, not a
    coin toss a fresh measurement reverses (the rounds of benchmarks/results/h200/decide show the step's spread)."""
    eligible = [t for t in timings if t.eligible]
    if not automatic.eligible:
        return min(eligible, key=lambda t: t.median_ratio)
    consistent = [t for t in eligible if t is not automatic and t.ratios and all(r < 1 for r in t.ratios)]
    return min(consistent, key=lambda t: t.median_ratio) if consistent else automatic


def _checked(value, variant: str) -> float:
    ms = float(value)
    if not math.isfinite(ms) or ms <= 0:
        raise DecideInputError(f"the timer returned {value!r} for the {variant}; a timer must return the call's "
                               "time in ms, a positive finite number")
    return ms


def _apply(plan, winner: StepTiming, choices: dict[str, str]) -> None:
    """Make the kept variant the plan, and say why in the decision, the notes and the reasons."""
    confirmation = plan.confirmation
    per_layer = confirmation.timing(PER_LAYER)
    if winner is per_layer:
        confirmation.decision = (f"the per-layer plan is kept: its step's median ratio to the automatic pick is "
                                 f"{winner.median_ratio:.4f}, the lowest of the eligible variants")
        return
    before = set(plan.choices.values())
    plan.choices = dict(choices)
    if AUTOMATIC in (winner.variant, *winner.same_as):
        others = [t for t in confirmation.timings if t is not winner and t.eligible]
        confirmation.decision = (
            "the automatic pick is kept: no eligible variant beat it in every round ("
            + "; ".join(f"{t.variant}: median ratio {t.median_ratio:.4f}, per round "
                        f"{min(t.ratios):.3f}–{max(t.ratios):.3f}" for t in others)
            + "), so the per-layer wins are within run-to-run noise")
    else:
        confirmation.decision = (f"{winner.variant} is kept instead of the per-layer plan: its step took a median "
                                 f"{winner.median_ms:.2f} ms (ratio {winner.median_ratio:.4f} to the automatic pick, "
                                 f"below 1 in every round) against {per_layer.median_ms:.2f} ms (ratio "
                                 f"{per_layer.median_ratio:.4f}) for the per-layer plan, whose per-layer wins in "
                                 "isolation did not add up in the whole step")
    plan.notes.append("step-level confirmation: " + confirmation.decision)
    for backend in set(plan.choices.values()):
        plan.reasons.pop(backend, None)
    for backend in sorted(before - set(plan.choices.values())):
        plan.reasons[backend] = (f"chosen per layer in isolation, but the whole step was faster with the "
                                 f"{winner.variant} (step-level confirmation)")
