"""Generations the decide tools repeat through the one pipeline runner (``models.runner.run``): one pipeline, prompt,
seed, steps and size, a schedule per run, arguments checked before any generation, the generations counted."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers

from .. import registry
from ..choice import BackendChoice
from ..compare.bands import EXACT, LOW_PRECISION, is_approximate
from ..errors import DecideInputError, InvalidSettingError
from ..util import rel_l2 as util_rel_l2
from ..models.attach import check_allowed, check_schedule, state_of
from ..models.limits import check_pipe_kwargs, seed_problem, seed_values
from ..models.runner import Run, run
from ..models.schedule import Schedule


def check_generation_args(prompt, steps) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise DecideInputError(f"prompt must be a non-empty text, got {prompt!r}; e.g. prompt='a red circle'")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise DecideInputError(f"steps={steps!r}: at least 2 denoising steps are needed (with 1 there is no "
                               "'which step' to ask about); e.g. steps=4")


def seed_list(seeds) -> list[int]:
    """``seeds=`` as a non-empty list of valid seeds (one seed is a list of one), as ``compare_images`` takes it."""
    try:
        values = seed_values(seeds)
    except InvalidSettingError as exc:
        raise DecideInputError(str(exc)) from None
    problem = next(filter(None, map(seed_problem, values)), None)
    if problem:
        raise DecideInputError(problem)
    return values


def as_schedule(pipe, plan, what: str) -> Schedule:
    """A backend name or a Schedule, checked now against the model's allowed set and layer names."""
    state = state_of(pipe)
    if isinstance(plan, str):
        if not plan.strip():
            raise DecideInputError(f"{what} is an empty backend name; e.g. {what}='sdpa'")
        check_allowed(plan, state.allowed)  # unknown names raise with a suggestion, disallowed ones with the fix
        return Schedule(default=plan)
    if isinstance(plan, Schedule):
        check_schedule(plan, state, what=f"{what}:", error=DecideInputError)
        return plan
    raise DecideInputError(f"{what} must be a backend name or a fluxlab.Schedule, got {type(plan).__name__}")


def describe(plan) -> str:
    """A short name: the backend, or "sdpa; planted at transformer_blocks.1 steps 1,2" for a Schedule."""
    if isinstance(plan, str):
        return plan
    if not isinstance(plan, Schedule):
        return getattr(plan, "__name__", repr(plan))
    parts = [plan.default or "automatic"]
    for rule in plan.rules:
        where = ",".join(p.removesuffix(".attn") for p in rule.layers) if rule.layers != ("*",) else ""
        when = f"steps {','.join(map(str, sorted(rule.steps)))}" if rule.steps is not None else ""
        parts.append(f"{rule.backend} at {' '.join(filter(None, (where, when))) or 'everything'}")
    return "; ".join(parts)


def approximate(spec: str) -> bool:
    """Whether a backend spec (a name, or "name:option=value") names a quantised or emulated kernel."""
    return is_approximate(registry.get_backend(BackendChoice.parse(spec).name))


def band_kind(schedule: Schedule) -> str:
    """The image-band class a schedule is judged in: low precision when any of its kernels is approximate."""
    return LOW_PRECISION if any(approximate(name) for name in schedule.backend_names()) else EXACT


@dataclasses.dataclass(frozen=True)
class Cells:
    """A region of the (layer x step) grid: these layers at these steps."""

    layers: tuple[str, ...]
    steps: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.layers) * len(self.steps)


def cell_schedule(good: Schedule, bad: Schedule, cells: Cells | None):
    """A schedule function for set_schedule: ``bad``'s answer inside ``cells``, ``good``'s everywhere else."""
    inside = set(itertools.product(cells.layers, cells.steps)) if cells else set()
    return lambda layer, step, num_steps: (bad if (layer, step) in inside else good)(layer, step, num_steps)


class Runner:
    """Generations of one pipeline with fixed prompt, seed, steps and size; ``count`` says how many ran and
    ``progress()`` (if given) is called after each."""

    def __init__(self, pipe, *, prompt: str, seed: int = 0, steps: int, height=None, width=None,
                 pipe_kwargs: dict | None = None, progress=None):
        check_generation_args(prompt, steps)
        if seed_problem(seed):
            raise DecideInputError(seed_problem(seed))
        check_pipe_kwargs(pipe_kwargs, "the decide tools", DecideInputError)
        self.pipe, self.prompt, self.seed, self.steps = pipe, prompt, int(seed), int(steps)
        self.height, self.width, self.pipe_kwargs = height, width, dict(pipe_kwargs or {})
        self.state, self.count, self.progress = state_of(pipe), 0, progress

    @property
    def layer_names(self) -> list[str]:
        return list(self.state.layer_names)

    def run(self, schedule, *, seed: int | None = None, image: bool = False, control=None) -> Run:
        """One generation with ``schedule`` (a Schedule or a schedule function): the latents after each step, the
        image only with ``image``. ``control``: a ``StepControl`` that can stop it between steps (then
        GenerationCancelled is raised and the run is not counted)."""
        self.state = state_of(self.pipe)  # after a detach and attach since this Runner was made it is a new one
        ran = run(self.pipe, schedule=schedule, prompt=self.prompt, seed=self.seed if seed is None else seed,
                  steps=self.steps, height=self.height, width=self.width, output="np" if image else "latent",
                  latents=True, control=control, transformer_time=True, **self.pipe_kwargs)
        self.count += 1
        if self.progress is not None:
            self.progress()
        return ran


# ||a - b|| / ||b|| in float64, inf where a holds NaN/inf: a drift that cannot be measured ranks worst.
rel_l2 = functools.partial(util_rel_l2, non_finite=math.inf)
