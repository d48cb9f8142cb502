"""Determinism and invariance of attention backends, as axes beside accuracy, for one attention call
(``check_invariance``) and for whole generations of a FLUX.2 pipeline (``check_generation_invariance``): is a rerun
bitwise identical, is sample i the same alone and inside a batch, does it depend on where it sits in the batch, and
(generations) how much of the batch difference is the attention kernel's own. docs/verdicts.md explains each axis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from ..defaults import DEFAULT_PROMPT
from ..dispatch import attention, plan
from ..errors import BackendUnavailableError
from ..platform import platform_for_device
from ..results import Result, markdown_table, model_of
from ..util import parse_dtype, torch_dtype_name
from .inputs import InputSpec, synthetic_qkv
from .specs import BackendSpec, parse_backends

DEFAULT_INPUT = InputSpec(520, 4, 128, distribution="normal", text_tokens=56)  # ragged: 8 keys past 4 x 128
RERUNS = 3
# Four captions of the kind the embedded model draws (training/shapes_data.py): different content per batch element.
PROMPTS = (DEFAULT_PROMPT,
           "a green triangle at the center on a white background",
           "a purple square at the top right and an orange circle at the bottom left on a black background",
           "a blue circle at the middle left on a yellow background")
BATCH = len(PROMPTS)
# The kernel is called once per sample under this temporary name for the "kernel's share" axis.
PER_SAMPLE_BACKEND = "invariance_per_sample"
AXES = ("rerun", "batch", "kernel_batch", "position")
AXIS_TEXT = {
    "rerun": "the same generation twice (sample 0 alone)",
    "batch": "each sample alone vs inside the batch of {batch} (the user's question: includes the rest of the "
             "model, whose linear layers run at batch 1 vs {batch})",
    "kernel_batch": "the batch of {batch} with the kernel called once on the batch vs once per sample (the rest of the "
                    "model identical: the attention kernel's own share of the batch difference)",
    "position": "the batch in order vs rotated by one (every sample at another index)",
}
TITLES = {"rerun": "rerun", "batch": "alone vs batch", "kernel_batch": "kernel's share", "position": "position"}


# -- the shared core: bitwise comparisons, one rounding step, the report ------------------------------------------


def _compare(pairs) -> tuple[bool, float, float, float]:
    """(all bitwise identical, worst rel-L2, worst max abs of the first tensors, worst max abs of the second) over
    ``[((a, ...), (b, ...)), ...]``: attention outputs, or final latents and images."""
    same, rel, max_abs, second = True, 0.0, 0.0, 0.0
    for xs, ys in pairs:
        same = same and all(torch.equal(x, y) for x, y in zip(xs, ys))
        diff = xs[0].double() - ys[0].double()
        norm = ys[0].double().norm().item()
        rel = max(rel, diff.norm().item() / norm if norm else (0.0 if diff.norm().item() == 0 else math.inf))
        max_abs = max(max_abs, diff.abs().max().item())
        if len(xs) > 1:
            second = max(second, (xs[1].double() - ys[1].double()).abs().max().item())
    return same, rel, max_abs, second


def _step(t: torch.Tensor) -> float:
    """The spacing of the dtype at the tensor's largest value: one rounding step there (the scale of "differs")."""
    return float(torch.finfo(t.dtype).eps * t.double().abs().max().item()) if t.is_floating_point() else 0.0


def _cell(row, axis: str, same: bool | None, step: float | None) -> str:
    """``identical`` or ``differs: [rel-L2 ..,] max .. (n steps)`` for a Markdown table."""
    if same is None or same:
        return "" if same is None else "identical"
    max_abs, rel = getattr(row, f"{axis}_max_abs"), getattr(row, f"{axis}_rel_l2", None)
    size = (f"rel-L2 {rel:.2e}, " if rel is not None else "") + f"max {max_abs:.2e}"
    return f"differs: {size}" + (f" ({max_abs / step:.3g} steps)" if step else "")


@dataclasses.dataclass(repr=False)
class _AxesReport(Result):
    """Rows per backend and the settings they were measured with (the result protocol of ``fluxlab.results``)."""

    rows: list
    meta: dict = dataclasses.field(default_factory=dict)
    model: dict | None = None
    ROW_AXES = {}  # axis -> the row's attribute

    @property
    def verdicts(self) -> dict[str, dict[str, bool | None]]:
        """backend -> {axis: True where bitwise identical, False where it differs, None where not run}."""
        return {r.backend: {axis: getattr(r, attr) for axis, attr in self.ROW_AXES.items()} for r in self.rows}

    def table_rows(self) -> list[dict]:
        return [r.as_dict() for r in self.rows]

    def as_dict(self) -> dict:
        return {"meta": self.meta, "rows": self.table_rows()}


# -- one attention call ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class InvarianceRow:
    """One backend: each axis is ``True`` (bitwise identical), ``False`` (differs: ``*_max_abs`` says by how much,
    beside one step of the dtype at the output's largest value, ``ulp_at_max``), or None (did not run: ``error``)."""

    backend: str
    dtype: str
    shape: tuple[int, ...]
    rerun_identical: bool | None = None
    rerun_max_abs: float | None = None
    batch_invariant: bool | None = None  # sample 0 alone == sample 0 inside a batch of 4
    batch_max_abs: float | None = None
    position_invariant: bool | None = None  # the same sample at index 0 and at index 3 of the batch
    position_max_abs: float | None = None
    ulp_at_max: float | None = None  # the dtype's spacing at the output's largest value: the scale of "differs"
    error: str | None = None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "shape": "x".join(map(str, self.shape))}


class InvarianceReport(_AxesReport):
    ROW_AXES = {"rerun": "rerun_identical", "batch": "batch_invariant", "position": "position_invariant"}

    def headline(self) -> str:
        m = self.meta
        return f"invariance of {len(self.rows)} backend(s): {m.get('input')}, {m.get('dtype')}, batch {m.get('batch')}"

    def to_markdown(self) -> str:
        return markdown_table([{"backend": r.backend, "dtype": r.dtype, "shape": "x".join(map(str, r.shape)),
                                **{TITLES[a]: _cell(r, a, getattr(r, attr), r.ulp_at_max)
                                   for a, attr in self.ROW_AXES.items()},
                                "one step": r.ulp_at_max, "error": r.error} for r in self.rows])


def check_invariance(backends=None, *, spec: InputSpec = DEFAULT_INPUT, dtype="bf16", device=None, seed: int = 0,
                     batch: int = BATCH, reruns: int = RERUNS) -> InvarianceReport:
    """Per backend (default: every backend that runs here): ``reruns`` identical calls, sample 0 alone vs inside a
    batch of ``batch`` different samples, and that sample at index 0 vs at the last index; bitwise."""
    dtype = parse_dtype(dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    platform = platform_for_device(device)
    q, k, v = (t.to(device=device, dtype=dtype) for t in
               synthetic_qkv(batch, spec.seq, spec.heads, spec.head_dim, spec.distribution, seed))
    scale = spec.head_dim ** -0.5
    order = list(range(1, batch)) + [0]  # sample 0 moved to the last index, the others shifted up
    rows = []
    for backend in parse_backends(backends, platform):
        row = InvarianceRow(backend.label, torch_dtype_name(dtype), (1, spec.seq, spec.heads, spec.head_dim))
        rows.append(row)
        try:
            one = plan(q[:1], k[:1], v[:1], backend=backend.choice, scale=scale, fallback=False, platform=platform)
            many = plan(q, k, v, backend=backend.choice, scale=scale, fallback=False, platform=platform)
            alone = [one(q[:1], k[:1], v[:1]) for _ in range(reruns)]
            together = many(q, k, v)
            moved = many(q[order], k[order], v[order])
        except BackendUnavailableError as exc:
            row.error = "; ".join(r for rs in exc.reasons.values() for r in rs) or str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a kernel that fails is reported, the others still run
            row.error = f"{type(exc).__name__}: {exc}"[:300]
            continue
        row.rerun_identical, _, row.rerun_max_abs, _ = _compare([((alone[0],), (o,)) for o in alone[1:]])
        row.batch_invariant, _, row.batch_max_abs, _ = _compare([((alone[0],), (together[:1],))])
        row.position_invariant, _, row.position_max_abs, _ = _compare([((together[:1],), (moved[-1:],))])
        row.ulp_at_max = _step(alone[0])
    return InvarianceReport(rows, meta={"input": spec.name, "dtype": torch_dtype_name(dtype),
                                        "batch": batch, "reruns": reruns, "seed": seed, "device": str(device),
                                        "platform": platform.describe()})


# -- whole generations ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GenerationInvarianceRow:
    """One backend. Each axis is ``True`` (final latents and image bitwise identical for every sample), ``False``
    (then ``*_rel_l2`` and ``*_max_abs`` give the worst sample's final-latent difference, ``*_pixel_max_abs`` the
    image's, beside ``latent_step``: one step of the latents' dtype at their largest value), or None (not run)."""

    backend: str
    dtype: str = ""
    rerun: bool | None = None
    rerun_rel_l2: float | None = None
    rerun_max_abs: float | None = None
    rerun_pixel_max_abs: float | None = None
    batch: bool | None = None
    batch_rel_l2: float | None = None
    batch_max_abs: float | None = None
    batch_pixel_max_abs: float | None = None
    kernel_batch: bool | None = None
    kernel_batch_rel_l2: float | None = None
    kernel_batch_max_abs: float | None = None
    kernel_batch_pixel_max_abs: float | None = None
    position: bool | None = None
    position_rel_l2: float | None = None
    position_max_abs: float | None = None
    position_pixel_max_abs: float | None = None
    latent_step: float | None = None  # eps(dtype) x the largest |final latent|: one rounding step there
    attention_calls: dict = dataclasses.field(default_factory=dict)  # backend -> calls, in one generation alone
    error: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class GenerationInvarianceReport(_AxesReport):
    ROW_AXES = {axis: axis for axis in AXES}

    def headline(self) -> str:
        m = self.meta
        return (f"whole-generation invariance of {len(self.rows)} backend(s): {m.get('steps')} steps, "
                f"{m.get('height')}x{m.get('width')}, {m.get('dtype')}, batch {m.get('batch')}, seeds {m.get('seeds')}")

    def to_markdown(self) -> str:
        rows = [{"backend": r.backend, **{TITLES[a]: _cell(r, a, getattr(r, a), r.latent_step) for a in AXES},
                 "one latent step": r.latent_step,
                 "attention calls": ", ".join(f"{k} {v}" for k, v in r.attention_calls.items()),
                 "error": r.error} for r in self.rows]
        axes = "\n".join(f"- **{TITLES[a]}**: {AXIS_TEXT[a].format(batch=self.meta.get('batch'))}" for a in AXES)
        return (f"{self.headline()}; prompts {list(self.meta.get('prompts', []))}.\n\n{axes}\n\n"
                "Differences are the worst sample's final latents (rel-L2, max abs) with the max abs in steps of "
                "the latents' dtype at their largest value.\n\n" + markdown_table(rows))


@contextlib.contextmanager
def _model_backend(pipe, choice):
    """``pipe`` generates with ``choice`` (any schedule set aside); its own backend and schedule come back after."""
    from ..models.attach import set_backend, set_schedule, state_of

    state = state_of(pipe)
    backend, schedule = state.backend, state.schedule
    set_backend(pipe, choice)  # refuses a backend outside the model's allowed set
    set_schedule(pipe, None)
    try:
        with choice.knob_context():
            yield
    finally:
        state.backend, state.schedule = backend, schedule


@contextlib.contextmanager
def _per_sample(pipe, choice):
    """A temporary backend that calls ``choice`` once per batch element: the same generation, the same model code
    at the same batch size, only the attention kernel sees batch 1."""
    from ..models.attach import state_of
    from ..registry import register_backend, unregister_backend

    def per_sample(q, k, v, *, scale, causal=False, return_lse=False):
        outs = [attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], backend=choice, scale=scale, causal=causal,
                          return_lse=return_lse, fallback=False) for i in range(q.shape[0])]
        if return_lse:
            return torch.cat([o for o, _ in outs]), torch.cat([lse for _, lse in outs])
        return torch.cat(outs)

    register_backend(PER_SAMPLE_BACKEND, per_sample, replace=True,
                     description=f"{choice} called once per batch element (invariance check)")
    state = state_of(pipe)
    chosen = state.chosen_allowed
    if chosen is not None:
        state.chosen_allowed = chosen | {PER_SAMPLE_BACKEND}
    try:
        with _model_backend(pipe, BackendSpec.parse(PER_SAMPLE_BACKEND).choice):
            yield
    finally:
        state.chosen_allowed = chosen
        unregister_backend(PER_SAMPLE_BACKEND)


def _generate(pipe, prompts, seeds, steps, height, width, pipe_kwargs):
    """Final latents [B, ...] and images [B, H, W, 3] of one pipeline call: one prompt and one generator alone, a
    list of each for a batch (noise from CPU generators: the same on every device)."""
    final = {}

    def keep(_pipe, _step, _timestep, tensors):
        final["latents"] = tensors["latents"].detach().clone()
        return tensors

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    alone = len(prompts) == 1
    output = pipe(prompt=prompts[0] if alone else list(prompts), generator=generators[0] if alone else generators,
                  height=height, width=width, num_inference_steps=steps, output_type="np",
                  callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"], **pipe_kwargs)
    images = torch.as_tensor(output.images)
    return final["latents"], images.reshape(len(prompts), *images.shape[-3:])


def check_generation_invariance(pipe, backends=None, *, prompts=PROMPTS, seed: int = 0, steps: int = 4,
                                height: int = 64, width: int = 64, **pipe_kwargs) -> GenerationInvarianceReport:
    """Per backend (default: every backend that runs here), whole generations of ``pipe`` (attached to fluxlab) with
    ``prompts[i]`` and seed ``seed + i``, compared bitwise on final latents and images: rerun, alone vs batch, the
    kernel's share (called once per sample) and position (docs/verdicts.md). Arguments are checked before any
    generation, as ``fluxlab.generate`` checks them; extra keywords go to the pipeline call."""
    from ..models.attach import state_of
    from ..models.capture import capture
    from ..models.limits import check_pipe_generation, check_pipe_kwargs
    from ..models.offload import execution_device

    state_of(pipe)  # not attached: one clear error before any work
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) < 2:
        raise ValueError(f"check_generation_invariance needs at least 2 prompts for a batch; got {len(prompts)}")
    seeds = [int(seed) + i for i in range(len(prompts))]
    check_pipe_kwargs(pipe_kwargs, "check_generation_invariance")
    for prompt, value in zip(prompts, seeds):
        check_pipe_generation(pipe, prompt=prompt, width=width, height=height, steps=steps, seed=value,
                              max_sequence_length=pipe_kwargs.get("max_sequence_length", 512),
                              guidance_scale=pipe_kwargs.get("guidance_scale"))
    steps, height, width = int(steps), int(height), int(width)
    device = execution_device(pipe)
    platform = platform_for_device(device)
    everyone = range(len(prompts))
    order = list(everyone)[1:] + [0]  # sample 0 to the last index, the others up by one

    def run(indices):
        return _generate(pipe, [prompts[i] for i in indices], [seeds[i] for i in indices], steps, height, width,
                         pipe_kwargs)

    def sample(result, i):
        return result[0][i:i + 1], result[1][i:i + 1]

    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**bar_config, "disable": True})
    rows = []
    try:
        for spec in parse_backends(backends, platform):
            row = GenerationInvarianceRow(spec.label, torch_dtype_name(pipe.transformer.dtype))
            rows.append(row)
            try:
                with _model_backend(pipe, spec.choice):
                    with capture(pipe, to="meta", lse=False) as cap:
                        first = run([0])
                    row.attention_calls = dict(cap.backends_used())
                    if not row.attention_calls:
                        raise RuntimeError(f"{spec.label} was never called: the pipeline does not route attention "
                                           "through fluxlab")
                    alone = [first] + [run([i]) for i in everyone[1:]]
                    again, batch, rotated = run([0]), run(everyone), run(order)
                with _per_sample(pipe, spec.choice):
                    split = run(everyone)
            except Exception as exc:  # noqa: BLE001 - a backend that fails is reported, the others still run
                row.error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            pairs = {"rerun": [(again, first)], "batch": [(sample(batch, i), alone[i]) for i in everyone],
                     "kernel_batch": [(sample(batch, i), sample(split, i)) for i in everyone],
                     "position": [(sample(rotated, order.index(i)), sample(batch, i)) for i in everyone]}
            for axis, compared in pairs.items():
                values = _compare(compared)
                for suffix, value in zip(("", "_rel_l2", "_max_abs", "_pixel_max_abs"), values):
                    setattr(row, axis + suffix, value)
            row.latent_step = _step(first[0])
    finally:
        pipe.set_progress_bar_config(**bar_config)
    meta = {"prompts": prompts, "seeds": seeds, "steps": steps, "height": height, "width": width,
            "batch": len(prompts), "dtype": torch_dtype_name(pipe.transformer.dtype), "device": str(device),
            "platform": platform.describe(), **{k: v for k, v in pipe_kwargs.items() if isinstance(v, (int, str))}}
    return GenerationInvarianceReport(rows, meta, model=model_of(pipe))


__all__ = ["GenerationInvarianceReport", "GenerationInvarianceRow", "InvarianceReport", "InvarianceRow",
           "check_generation_invariance", "check_invariance"]
