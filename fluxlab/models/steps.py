"""Where a transformer forward sits in a pipeline's denoising loop: step index, step count, CFG branch.

Read from the pipeline and its scheduler at each transformer forward, so it needs no callback from the user and
works for every FLUX.2 pipeline in diffusers 0.42: the pipelines set ``_current_timestep`` inside the loop (None
outside), ``_num_timesteps`` before it, and call ``scheduler.set_begin_index``; the scheduler's ``step_index`` is
None until its first ``step()`` and then counts steps. Klein's true CFG runs two forwards per step at batch B,
conditional first, then unconditional (``pipeline_flux2_klein.py``), so the branch is the forward's position
within its step.
"""

from __future__ import annotations

import dataclasses

BRANCHES = ("cond", "uncond")


@dataclasses.dataclass(frozen=True)
class Position:
    step: int | None = None  # 0-based denoising step; None outside a pipeline's denoising loop
    num_steps: int | None = None
    branch: str | None = None  # "cond" / "uncond" under true CFG, else None
    text_tokens: int | None = None


OUTSIDE_LOOP = Position()


class StepTracker:
    """Turns "a transformer forward happened" into a :class:`Position`, given the pipeline that runs it."""

    def __init__(self):
        self._last_key = None
        self._forwards_in_step = 0

    def position(self, pipe, text_tokens: int | None) -> Position:
        timestep = getattr(pipe, "_current_timestep", None) if pipe is not None else None
        if timestep is None:  # a bare transformer call, or a pipeline outside its loop
            self._last_key = None
            return Position(text_tokens=text_tokens)
        scheduler = pipe.scheduler
        begin = getattr(scheduler, "begin_index", None) or 0
        index = getattr(scheduler, "step_index", None)
        step = 0 if index is None else index - begin  # None: the first scheduler.step() has not run yet
        num_steps = getattr(pipe, "_num_timesteps", None)
        branch = None
        if getattr(pipe, "do_classifier_free_guidance", False):
            # The loop's timestep is a fresh tensor per step, alive for the whole step: (its id, step) keys the
            # step. Two pipeline calls can reuse an id for the same step number, so the order is taken modulo 2.
            key = (id(timestep), step)
            self._forwards_in_step = self._forwards_in_step + 1 if key == self._last_key else 0
            self._last_key = key
            branch = BRANCHES[self._forwards_in_step % 2]
        return Position(step, num_steps, branch, text_tokens)
