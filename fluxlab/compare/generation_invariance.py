"""Determinism and invariance of a whole generation, per backend: is a rerun bitwise identical, is sample i the same
generated alone and inside a batch of 4 (a list of prompts and a list of generators, diffusers' own idiom), does it
depend on where it sits in the batch, and how much of the batch difference is the attention kernel's own."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from ..defaults import DEFAULT_PROMPT
from ..results import Result, markdown_table, model_of
from ..util import torch_dtype_name
from .specs import BackendSpec, parse_backends

# Four captions of the kind the embedded model draws (training/shapes_data.py): different content per batch element.
PROMPTS = (DEFAULT_PROMPT,
           "a green triangle at the center on a white background",
           "a purple square at the top right and an orange circle at the bottom left on a black background",
           "a blue circle at the middle left on a yellow background")
BATCH = len(PROMPTS)
# The kernel is called once per sample under this temporary name for the "kernel's share" axis (see below).
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

    def cell(self, axis: str) -> str:
        """``identical`` or ``differs: rel-L2 .., max .. (n steps)`` for the Markdown table."""
        same = getattr(self, axis)
        if same is None:
            return ""
        if same:
            return "identical"
        max_abs = getattr(self, f"{axis}_max_abs")
        steps = f" ({max_abs / self.latent_step:.3g} steps)" if self.latent_step else ""
        return f"differs: rel-L2 {getattr(self, f'{axis}_rel_l2'):.2e}, max {max_abs:.2e}{steps}"


@dataclasses.dataclass(repr=False)
class GenerationInvarianceReport(Result):
    """Rows per backend and the settings they were measured with (the result protocol of ``fluxlab.results``)."""

    rows: list[GenerationInvarianceRow]
    meta: dict = dataclasses.field(default_factory=dict)
    model: dict | None = None

    @property
    def verdicts(self) -> dict[str, dict[str, bool | None]]:
        """backend -> {"rerun", "batch", "kernel_batch", "position"}: True where bitwise identical."""
        return {r.backend: {axis: getattr(r, axis) for axis in AXES} for r in self.rows}

    def headline(self) -> str:
        m = self.meta
        return (f"whole-generation invariance of {len(self.rows)} backend(s): {m.get('steps')} steps, "
                f"{m.get('height')}x{m.get('width')}, {m.get('dtype')}, batch {m.get('batch')}, seeds {m.get('seeds')}")

    def table_rows(self) -> list[dict]:
        return [r.as_dict() for r in self.rows]

    def as_dict(self) -> dict:
        return {"meta": self.meta, "rows": self.table_rows()}

    def to_markdown(self) -> str:
        rows = [{"backend": r.backend, "rerun": r.cell("rerun"), "alone vs batch": r.cell("batch"),
                 "kernel's share": r.cell("kernel_batch"), "position": r.cell("position"),
                 "one latent step": r.latent_step,
                 "attention calls": ", ".join(f"{k} {v}" for k, v in r.attention_calls.items()),
                 "error": r.error} for r in self.rows]
        axes = "\n".join(f"- **{name}**: {AXIS_TEXT[axis].format(batch=self.meta.get('batch'))}" for name, axis in
                         (("rerun", "rerun"), ("alone vs batch", "batch"), ("kernel's share", "kernel_batch"),
                          ("position", "position")))
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
    from ..dispatch import attention
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


def _compare(pairs) -> tuple[bool, float, float, float]:
    """(all bitwise identical, worst rel-L2, worst max abs of the latents, worst max abs pixel) over
    ``[((latent, image), (latent, image)), ...]``."""
    same, rel, max_abs, pixel = True, 0.0, 0.0, 0.0
    for (lat_a, img_a), (lat_b, img_b) in pairs:
        same = same and torch.equal(lat_a, lat_b) and torch.equal(img_a, img_b)
        diff = lat_a.double() - lat_b.double()
        norm = lat_b.double().norm().item()
        rel = max(rel, diff.norm().item() / norm if norm else (0.0 if diff.norm().item() == 0 else math.inf))
        max_abs = max(max_abs, diff.abs().max().item())
        pixel = max(pixel, (img_a.double() - img_b.double()).abs().max().item())
    return same, rel, max_abs, pixel


def check_generation_invariance(pipe, backends=None, *, prompts=PROMPTS, seed: int = 0, steps: int = 4,
                                height: int = 64, width: int = 64, **pipe_kwargs) -> GenerationInvarianceReport:
    """Per backend (default: every backend that runs here, emulated ones included on a CPU), whole generations of
    ``pipe`` (a FLUX.2 pipeline fluxlab is attached to: ``fluxlab.load_flux2``) with ``prompts[i]`` and seed
    ``seed + i``: sample 0 twice alone (rerun), every sample alone vs inside one batch of all of them (batch), that
    batch with the kernel called once per sample (kernel's share: the rest of the model runs the same batch), and
    the batch rotated by one (position). Comparisons are bitwise on final latents and images; where they differ the
    worst sample's difference is given beside one step of the latents' dtype. Prompts, size, steps and seeds are
    checked before any generation, as ``fluxlab.generate`` checks them. Extra keyword arguments go to the pipeline
    call (e.g. ``max_sequence_length``)."""
    from ..models.attach import state_of
    from ..models.capture import capture
    from ..models.limits import check_pipe_generation, check_pipe_kwargs
    from ..models.offload import execution_device
    from ..platform import platform_for_device

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
    specs = parse_backends(backends, platform) if backends is not None else parse_backends(None, platform)
    order = list(range(1, len(prompts))) + [0]  # sample 0 to the last index, the others up by one

    def run(indices):
        return _generate(pipe, [prompts[i] for i in indices], [seeds[i] for i in indices], steps, height, width,
                         pipe_kwargs)

    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**bar_config, "disable": True})
    rows = []
    try:
        for spec in specs:
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
                    alone = [first] + [run([i]) for i in range(1, len(prompts))]
                    again = run([0])
                    batch = run(range(len(prompts)))
                    rotated = run(order)
                with _per_sample(pipe, spec.choice):
                    split = run(range(len(prompts)))
            except Exception as exc:  # noqa: BLE001 - a backend that fails is reported, the others still run
                row.error = f"{type(exc).__name__}: {exc}"[:300]
                continue

            def sample(result, i):
                return result[0][i:i + 1], result[1][i:i + 1]

            row.rerun, row.rerun_rel_l2, row.rerun_max_abs, row.rerun_pixel_max_abs = _compare(
                [(again, first)])
            row.batch, row.batch_rel_l2, row.batch_max_abs, row.batch_pixel_max_abs = _compare(
                [(sample(batch, i), alone[i]) for i in range(len(prompts))])
            row.kernel_batch, row.kernel_batch_rel_l2, row.kernel_batch_max_abs, row.kernel_batch_pixel_max_abs = \
                _compare([(sample(batch, i), sample(split, i)) for i in range(len(prompts))])
            row.position, row.position_rel_l2, row.position_max_abs, row.position_pixel_max_abs = _compare(
                [(sample(rotated, order.index(i)), sample(batch, i)) for i in range(len(prompts))])
            latents = first[0]
            row.latent_step = float(torch.finfo(latents.dtype).eps * latents.double().abs().max().item())
    finally:
        pipe.set_progress_bar_config(**bar_config)
    meta = {"prompts": prompts, "seeds": seeds, "steps": steps, "height": height, "width": width,
            "batch": len(prompts), "dtype": torch_dtype_name(pipe.transformer.dtype), "device": str(device),
            "platform": platform.describe(), **{k: v for k, v in pipe_kwargs.items() if isinstance(v, (int, str))}}
    return GenerationInvarianceReport(rows, meta, model=model_of(pipe))


__all__ = ["GenerationInvarianceReport", "GenerationInvarianceRow", "check_generation_invariance"]
