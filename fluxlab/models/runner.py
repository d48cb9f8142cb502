"""One pipeline run for every fluxlab tool: seeded noise, latents per step, synchronised timing, attention calls,
progress and Cancel, peak memory, and Ctrl-C that stops after the current step (the partial output kept)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time

import numpy as np
import torch

from ..choice import BackendChoice
from ..dispatch import use_backend
from .attach import is_attached, set_backend, set_schedule, state_of
from .capture import capture
from .offload import PeakMemory, execution_device
from .progress import StepControl, is_warm, mark_warm, to_warm, warmup_note

KEEP = object()  # run(backend=KEEP / schedule=KEEP): leave the pipeline's own setting


def attached_state(pipe):
    """fluxlab's state of an attached FLUX.2 pipeline, or None (not attached, or not a FLUX.2 pipeline)."""
    try:
        return state_of(pipe) if is_attached(pipe) else None
    except (TypeError, AttributeError, ImportError):
        return None


def device_of(pipe) -> torch.device:
    """Where ``pipe`` computes (an offloaded pipeline's accelerator); the CPU for a stand-in without models."""
    try:
        return execution_device(pipe)
    except Exception:  # noqa: BLE001 - a pipeline-like object without diffusers' attributes
        return torch.device("cpu")


@dataclasses.dataclass
class Run:
    """One generation: its first image, the latents after each step and what was measured."""

    latents: list[torch.Tensor]  # after each step (CPU float32) when collected
    image: object  # PIL image ("pil"), [H, W, 3] float64 in [0, 1] ("np"), None ("latent")
    transformer_s: float | None  # time inside the transformer's forwards (synchronised), when asked for
    total_s: float  # the pipeline call, prompt encoding and VAE decode included
    steps_s: list[float] = dataclasses.field(default_factory=list)  # per denoising step
    calls: dict[str, int] | None = None  # backend -> attention calls it served; None: not counted
    peak: PeakMemory | None = None
    steps: int = 0

    @property
    def final(self) -> torch.Tensor:
        return self.latents[-1]

    @property
    def completed(self) -> int:
        return len(self.steps_s)

    @property
    def interrupted(self) -> bool:
        return self.completed < self.steps


class Measure:
    """Around any block: synchronised seconds, peak accelerator memory and, with ``calls`` on a pipeline fluxlab is
    attached to, which backend served how many attention calls (a shapes-only ``capture``: proof of what ran).
    ``transformer``: also the seconds inside the transformer's forwards."""

    def __init__(self, pipe, *, calls: bool = False, transformer: bool = False):
        self.pipe, self.device = pipe, device_of(pipe)
        self.peak = PeakMemory(self.device)
        self.calls: dict[str, int] | None = None
        self.total_s, self.transformer_s = 0.0, (0.0 if transformer else None)
        self._count, self._capture, self._started = calls and attached_state(pipe) is not None, None, 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so a time is the GPU's, not the launch queue's

    def __enter__(self):
        with contextlib.ExitStack() as stack:  # kept open only if everything is in place
            if self._count:
                self._capture = stack.enter_context(capture(self.pipe, to="meta", lse=False))
            if self.transformer_s is not None:  # the seconds inside the transformer's forwards
                model = self.pipe.transformer
                for handle in (model.register_forward_pre_hook(self._before, with_kwargs=True),
                               model.register_forward_hook(self._after, with_kwargs=True, always_call=True)):
                    stack.callback(handle.remove)
            stack.enter_context(self.peak)
            self._stack = stack.pop_all()
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.total_s = time.perf_counter() - self.start
        if self._capture is not None:
            self.calls = self._capture.backends_used()
        return self._stack.__exit__(*exc)

    def _before(self, module, args, kwargs):
        self.sync()
        self._started = time.perf_counter()

    def _after(self, module, args, kwargs, output):
        self.sync()
        self.transformer_s += time.perf_counter() - self._started


@contextlib.contextmanager
def installed(pipe, backend=KEEP, schedule=KEEP):
    """``pipe`` set up for one run: ``backend`` (a name or BackendChoice; None: the automatic choice) as the model's
    own where fluxlab is attached (refused outside its allowed set) and through ``use_backend`` for any pipeline,
    ``schedule`` (None: none), diffusers' own progress bar off. Everything comes back afterwards."""
    state = attached_state(pipe)
    saved = (state.backend, state.schedule) if state is not None else None
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(**{**bar_config, "disable": True})
    try:
        if state is not None and backend is not KEEP:
            set_backend(pipe, backend)
        if state is not None and schedule is not KEEP:
            set_schedule(pipe, schedule)
        choice = None if backend in (KEEP, None) else BackendChoice.parse(backend)
        with use_backend(choice.name, **dict(choice.options)) if choice else contextlib.nullcontext():
            yield
    finally:
        if state is not None:
            state.backend, state.schedule = saved
            state._parsed.clear()
        if hasattr(pipe, "set_progress_bar_config"):
            pipe._progress_bar_config = bar_config


@contextlib.contextmanager
def ctrl_c_cancels(control: StepControl):
    """In the main thread, the first Ctrl-C cancels after the current denoising step (so the output can be written
    whole, marked interrupted); a second one interrupts at once. Elsewhere (other threads, a handler someone else
    installed) Ctrl-C keeps its behaviour; a process started with SIGINT ignored (``nohup``, ``cmd &`` in a script)
    keeps ignoring it, as Python itself does: fluxlab never turns Ctrl-C back on."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def request_stop(_signum, _frame):
        control.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nfluxlab: stopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run(pipe, *, prompt: str, seed: int, steps: int, height=None, width=None, output: str = "np",
        latents: bool = False, backend=KEEP, schedule=KEEP, control: StepControl | None = None,
        count_steps: bool = True, on_step=None, partial: bool = False, ctrl_c: bool = False, calls: bool = False,
        transformer_time: bool = False, **pipe_kwargs) -> Run:
    """One generation of ``pipe`` from the noise of ``seed`` (a CPU generator: the same on every device).

    ``output``: "pil", "np" or "latent" (no VAE decode); ``latents``: keep the latents after each step. ``backend``
    / ``schedule``: as :func:`installed`. ``control``: a ``StepControl`` that counts the steps (unless
    ``count_steps`` is false, e.g. for a warm-up) and can cancel between two of them; a cancelled run raises
    ``GenerationCancelled`` unless ``partial``, which returns what there is (``Run.interrupted``). ``on_step(i)``
    runs after each step; a KeyboardInterrupt it raises cancels. ``ctrl_c``: Ctrl-C cancels too
    (:func:`ctrl_c_cancels`). ``calls`` and ``transformer_time``: as :class:`Measure`.
    """
    control = control if control is not None else StepControl()
    collected, step_ends = [], []

    def step_done(pipe_, i, _t, tensors):
        measure.sync()
        step_ends.append(time.perf_counter())
        if latents:
            collected.append(tensors["latents"].detach().float().cpu().clone())
        if on_step is not None:
            try:
                on_step(i)
            except KeyboardInterrupt:
                control.cancel()
        return tensors

    kwargs = dict(prompt=prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
                  output_type=output, callback_on_step_end=control.callback(step_done, count=count_steps),
                  **({"callback_on_step_end_tensor_inputs": ["latents"]} if latents else {}), **pipe_kwargs)
    kwargs.update({k: v for k, v in (("height", height), ("width", width)) if v is not None})
    with installed(pipe, backend, schedule), (ctrl_c_cancels(control) if ctrl_c else contextlib.nullcontext()), \
            Measure(pipe, calls=calls, transformer=transformer_time) as measure:
        result = pipe(**kwargs)
    if not partial:
        control.check()  # cancelled: its output is no result
    steps_s = [b - a for a, b in zip([measure.start, *step_ends], step_ends)]
    image = None if output == "latent" else first_image(result, as_array=output == "np")
    return Run(collected, image, measure.transformer_s, measure.total_s, steps_s, measure.calls, measure.peak,
               int(steps))


def first_image(result, as_array: bool):
    """The first image of a pipeline's result (``.images``, a ``return_dict=False`` tuple, or the images)."""
    images = getattr(result, "images", result)
    if isinstance(images, tuple):
        images = images[0]
    if not as_array:
        return images[0] if isinstance(images, (list, tuple)) else images
    if isinstance(images, torch.Tensor):
        images = images.float().cpu().numpy()
    images = np.asarray(images, dtype=np.float64)
    return images[0] if images.ndim == 4 else images


def warm_up(pipe, backends: dict, one_step, requested, height: int, width: int, text_tokens=None,
            announce=None) -> tuple[str, dict[str, float]]:
    """One 1-step generation on each backend that compiles on first use and is not warm at this size, so the
    timings after it leave compiling out. ``backends``: label -> (backend name, warm key); ``one_step(label)``
    generates; ``requested`` as ``warmup.to_warm``; ``announce(name)`` before each. A warm-up that fails is
    skipped (the timed run reports the error). Returns the note the timings carry and label -> seconds."""
    device = device_of(pipe)
    model = getattr(pipe, "transformer", pipe)
    chosen = set(to_warm([name for name, _ in backends.values()], device, requested))
    warmed, already = {}, []
    for label, (name, key) in backends.items():
        if name not in chosen:
            continue
        if is_warm(model, key, device, height, width, text_tokens):
            already.append(label)
            continue
        if announce is not None:
            announce(name)
        start = time.perf_counter()
        try:
            one_step(label)
        except Exception:  # noqa: BLE001 - the timed run reports this backend's error
            continue
        warmed[label] = time.perf_counter() - start
        mark_warm(model, key, device, height, width, text_tokens)
    return warmup_note(warmed, already, height, width), warmed
