"""Generations the decide tools repeat: one pipeline, prompt, seed, size; a schedule per run; counted and checked.

Arguments are checked before any generation (backend and schedule names against the model's allowed set, steps,
prompt). Each run returns the latents after every step; images only when asked (the VAE decode is skipped
otherwise). The pipeline's backend and schedule come back afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import time

import numpy as np
import torch

from ..errors import DecideInputError
from ..util import rel_l2 as util_rel_l2
from ..models.attach import check_allowed, check_schedule, set_schedule, state_of
from ..models.errors import InvalidSettingError
from ..models.limits import check_pipe_kwargs, seed_problem, seed_values
from ..models.schedule import Schedule, layer_matches


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
    for value in values:
        problem = seed_problem(value)
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
    if isinstance(plan, Schedule):
        parts = [plan.default or "automatic"]
        for rule in plan.rules:
            where = ",".join(p.removesuffix(".attn") for p in rule.layers) if rule.layers != ("*",) else ""
            when = f"steps {','.join(map(str, sorted(rule.steps)))}" if rule.steps is not None else ""
            parts.append(f"{rule.backend} at {' '.join(filter(None, (where, when))) or 'everything'}")
        return "; ".join(parts)
    return getattr(plan, "__name__", repr(plan))


@dataclasses.dataclass(frozen=True)
class Cells:
    """A region of the (layer x step) grid: these layers at these steps."""

    layers: tuple[str, ...]
    steps: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.layers) * len(self.steps)


class CellSchedule:
    """``bad``'s answer inside ``cells``, ``good``'s everywhere else (a schedule function for set_schedule)."""

    def __init__(self, good: Schedule, bad: Schedule, cells: Cells | None):
        self.good, self.bad, self.cells = good, bad, cells
        self._layers = frozenset(cells.layers) if cells else frozenset()
        self._steps = frozenset(cells.steps) if cells else frozenset()

    def __call__(self, layer, step, num_steps):
        inside = layer in self._layers and step in self._steps
        return (self.bad if inside else self.good)(layer, step, num_steps)


@dataclasses.dataclass
class Run:
    latents: list[torch.Tensor]  # after each step, CPU float32
    image: np.ndarray | None  # [H, W, 3] in [0, 1] when asked for
    transformer_s: float  # time inside the transformer's forwards (synchronised on GPU)
    total_s: float

    @property
    def final(self) -> torch.Tensor:
        return self.latents[-1]


class Runner:
    """Generations of one pipeline with fixed prompt, seed, steps and size; ``count`` says how many ran."""

    def __init__(self, pipe, *, prompt: str, seed: int = 0, steps: int, height=None, width=None,
                 pipe_kwargs: dict | None = None, progress=None):
        check_generation_args(prompt, steps)
        if seed_problem(seed):
            raise DecideInputError(seed_problem(seed))
        check_pipe_kwargs(pipe_kwargs, "the decide tools", DecideInputError)
        self.pipe, self.prompt, self.seed, self.steps = pipe, prompt, int(seed), int(steps)
        self.height, self.width = height, width
        self.pipe_kwargs = dict(pipe_kwargs or {})
        self.state = state_of(pipe)
        self.count = 0
        self.progress = progress  # called with a short label after each generation

    @property
    def layer_names(self) -> list[str]:
        return list(self.state.layer_names)

    def run(self, schedule, *, seed: int | None = None, image: bool = False, control=None) -> Run:
        """One generation with ``schedule`` (a Schedule or a schedule function) installed. ``control``: a
        ``StepControl`` that sees each step and can stop between steps (then GenerationCancelled is raised)."""
        latents = []

        def collect(pipeline, step, timestep, callback_kwargs):
            latents.append(callback_kwargs["latents"].detach().float().cpu().clone())
            return callback_kwargs

        kwargs = dict(prompt=self.prompt, num_inference_steps=self.steps,
                      generator=torch.Generator(device="cpu").manual_seed(self.seed if seed is None else seed),
                      output_type="np" if image else "latent",
                      callback_on_step_end=collect if control is None else control.callback(collect),
                      callback_on_step_end_tensor_inputs=["latents"], **self.pipe_kwargs)
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        with self._installed(schedule), _TransformerTimer(self.pipe.transformer) as timer:
            start = time.perf_counter()
            output = self.pipe(**kwargs)
            total = time.perf_counter() - start
        if control is not None:
            control.check()  # a cancelled run stopped early: its latents are no result (and it is not counted)
        self.count += 1
        if self.progress is not None:
            self.progress()
        picture = None
        if image:
            images = output.images
            picture = np.asarray(images[0] if len(np.shape(images)) == 4 else images, dtype=np.float64)
        return Run(latents, picture, timer.seconds, total)

    @contextlib.contextmanager
    def _installed(self, schedule):
        # The model's state now: after a detach and attach since this Runner was made it is a new one, and the
        # schedule must be taken off the state it was put on.
        state = self.state = state_of(self.pipe)
        backend, previous = state.backend, state.schedule
        bar_config = dict(getattr(self.pipe, "_progress_bar_config", {}))
        self.pipe.set_progress_bar_config(**{**bar_config, "disable": True})
        set_schedule(self.pipe, schedule)
        try:
            yield
        finally:
            state.schedule = previous
            state._parsed.clear()
            state.backend = backend
            self.pipe._progress_bar_config = bar_config


class _TransformerTimer:
    """Seconds spent in the transformer's forwards (pre/post hooks; the GPU is synchronised at both ends)."""

    def __init__(self, transformer):
        self.transformer = transformer
        self.seconds = 0.0
        # An offloaded transformer (load_flux2(offload=...)) rests on the CPU between calls and runs on the GPU.
        self._sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def __enter__(self):
        def before(module, args, kwargs):
            self._sync()
            self._start = time.perf_counter()

        def after(module, args, kwargs, output):
            self._sync()
            self.seconds += time.perf_counter() - self._start

        self._handles = [self.transformer.register_forward_pre_hook(before, with_kwargs=True),
                         self.transformer.register_forward_hook(after, with_kwargs=True, always_call=True)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False


# ||a - b|| / ||b|| in float64, inf where a holds NaN/inf: a drift that cannot be measured ranks worst.
rel_l2 = functools.partial(util_rel_l2, non_finite=math.inf)
