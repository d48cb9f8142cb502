"""``compare_images``: one generation per backend from identical noise; PSNR/SSIM, latent drift, verdicts in image bands
(``fluxlab.compare.bands``), a figure; and ``measure_image_band``, the band of a user's pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from ..defaults import DEFAULT_PROMPT
from .. import registry
from ..errors import BadReferenceError, InvalidSettingError
from ..models.limits import check_pipe_generation, check_pipe_kwargs, seed_values
from ..models.limits import diffusers_names
from ..models.progress import StepControl
from ..models.offload import gib
from ..models.runner import device_of, run, warm_up as run_warm_up
from ..results import Result, format_cell, markdown_table, model_of
from ..util import rel_l2
from .bands import (CLASSES, DEFAULT_BAND_PROMPTS, LOW_PRECISION, YARDSTICK_BACKENDS, ImageBand, ImageBandError,
                    band_from_outputs, check_classes, exact_spread, from_image_metrics, is_approximate,
                    judge_exact_image, judge_with_band, resolve_band, setting_of)
from .specs import BackendSpec
from .tolerances import FAIL


@dataclasses.dataclass
class ImageRow:
    """One backend's generation against the reference backend's."""

    backend: str
    psnr: float = math.nan  # dB; inf where the images are identical
    ssim: float = math.nan  # 1.0 where identical
    max_abs_pixel: float = math.nan  # pixels in [0, 1]
    mean_abs_pixel: float = math.nan
    final_latent_rel_l2: float = math.nan
    latent_drift: list[float] = dataclasses.field(default_factory=list)  # rel. L2 vs reference, per step
    attention_calls: int | None = None  # attention calls routed through fluxlab (a shapes-only capture)
    time_s: float | None = None  # after any warm-up (see ImageComparison.settings["warm_up"])
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated during the timed run; None on the CPU
    warmup_s: float | None = None  # the 1-step warm-up run of a backend that compiles on first use
    error: str | None = None
    # The verdict (bands.IMAGE_RULE_TEXT) and its reason; with several seeds the fields above are means and the
    # *_worst ones the worst seed's.
    verdict: str | None = None
    verdict_note: str = ""
    seeds: list[int] = dataclasses.field(default_factory=list)
    psnr_worst: float = math.nan
    ssim_worst: float = math.nan
    final_latent_rel_l2_worst: float = math.nan

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(repr=False)
class ImageComparison(Result):
    """Images, per-backend metrics against ``reference``, and the settings they were made with (and the result
    protocol, ``fluxlab.results``: ``save`` writes the metrics and settings, not the images)."""

    reference: str
    rows: list[ImageRow]
    images: dict[str, np.ndarray]  # backend -> [H, W, 3] float in [0, 1]
    latents: dict[str, list[torch.Tensor]]  # backend -> latents after each step (CPU, float32)
    settings: dict
    spread: float = math.nan  # largest final-latent rel-L2 between two exact yardstick kernels (worst seed)
    model: dict | None = None  # the pipeline that generated them (results.model_of)

    def headline(self) -> str:
        verdicts = ", ".join(f"{name} {verdict}" for name, verdict in self.verdicts.items())
        return (f"{len(self.rows)} backend(s) vs {self.reference}, prompt {self.settings.get('prompt')!r}"
                + (f": {verdicts}" if verdicts else ""))

    def table_rows(self) -> list[dict]:
        return [r.as_dict() for r in self.rows]

    def as_dict(self) -> dict:
        return {"reference": self.reference, "spread": self.spread, "settings": self.settings,
                "rows": self.table_rows()}

    @property
    def metrics(self) -> dict[str, ImageRow]:
        return {row.backend: row for row in self.rows}

    @property
    def verdicts(self) -> dict[str, str]:
        """backend -> "pass" / "warn" / "fail" (rule: ``fluxlab.compare.IMAGE_RULE_TEXT``)."""
        return {row.backend: row.verdict for row in self.rows if row.verdict is not None}

    def figure(self, path=None):
        from .plots import plot_image_comparison

        return plot_image_comparison(self, path=path)

    def to_markdown(self) -> str:
        s = self.settings
        seeds = s.get("seeds", [s["seed"]])
        table = markdown_table([_shown(row) for row in self.rows])
        return (f"Prompt {s['prompt']!r}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, "
                f"{s['steps']} steps, {s['height']}x{s['width']}; reference backend: {self.reference}; "
                f"exact-kernel spread {format_cell(self.spread, '.3g')}.\n\n{table}\n"
                f"Times: {s.get('warm_up', 'no warm-up')}. Peak memory: {s.get('peak_memory', '')}.\n")

    def _repr_html_(self) -> str:
        """The metrics table and the figure."""
        import base64
        import html

        from .plots import figure_png

        try:
            png = base64.b64encode(figure_png(self.figure())).decode()
            picture = f'<img src="data:image/png;base64,{png}"/>'
        except (ImportError, ValueError) as exc:
            picture = f"<p>(no figure: {html.escape(str(exc))})</p>"
        return self.to_html() + picture


def _shown(r: ImageRow) -> dict:
    """A row of the markdown table, each number at the precision that tells kernels apart."""
    return {"backend": r.backend, "verdict": r.verdict, "PSNR (dB)": format_cell(r.psnr, ".2f"),
            "SSIM": format_cell(r.ssim, ".5f"), "max abs pixel": format_cell(r.max_abs_pixel, ".3g"),
            "final latent rel-L2": format_cell(r.final_latent_rel_l2, ".3g"),
            "worst seed rel-L2": format_cell(r.final_latent_rel_l2_worst, ".3g"), "attention calls": r.attention_calls,
            "time (s)": format_cell(r.time_s, ".2f"),
            "peak GPU memory": None if r.peak_memory_bytes is None else gib(r.peak_memory_bytes), "error": r.error}


def _skimage():
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as exc:
        raise ImportError("image comparisons need scikit-image for PSNR/SSIM: pip install scikit-image "
                          "(or fluxlab[compare])") from exc
    return peak_signal_noise_ratio, structural_similarity


def image_metrics(image, ref_image) -> dict:
    """PSNR (dB, inf where identical), SSIM and the largest and mean |pixel difference| of ``image`` against
    ``ref_image`` ([H, W, 3] in [0, 1]); PSNR and SSIM are NaN where ``image`` is not finite."""
    psnr_of, ssim_of = _skimage()
    diff = np.abs(image - ref_image)
    finite = bool(np.isfinite(image).all())
    with np.errstate(divide="ignore"):
        psnr = float(psnr_of(ref_image, image, data_range=1.0)) if finite else math.nan
    ssim = float(ssim_of(ref_image, image, channel_axis=-1, data_range=1.0)) if finite else math.nan
    return {"psnr": psnr, "ssim": ssim, "max_abs_pixel": float(diff.max()), "mean_abs_pixel": float(diff.mean())}


@diffusers_names
def compare_images(pipe, backends, prompt: str = DEFAULT_PROMPT, seed: int | None = None, steps: int = 4,
                   height: int = 64, width: int = 64, *, seeds=None, reference: str | None = None,
                   yardstick: bool = True, require_routing: bool = True, warmup="auto", control=None,
                   force: bool = False, band=None, **pipe_kwargs) -> ImageComparison:
    """Generate one image per backend from the same noise, compare each with the reference backend's, judge it
    (``ImageComparison.verdicts``; rule ``fluxlab.compare.IMAGE_RULE_TEXT``; docs/compare.md and docs/verdicts.md).

    ``backends``: specs as for ``compare_attention`` (a backend may repeat: identical runs give PSNR inf, SSIM 1).
    ``reference``: what the others are compared with (default: the first exact one that generated an image); it
    must be exact, and at every seed it is judged against the float64 ``reference`` backend: NaN/inf or a fail
    raises ``BadReferenceError``. A backend that fails becomes a row with its error and verdict "fail".
    ``seed`` or ``seeds`` (not both): with several, the numbers are means and the ``*_worst`` fields and the
    verdict the worst seed's; images and latents kept are the first seed's.
    Exact kernels are judged by the spread between ``sdpa``, ``sdpa_math`` and ``reference`` (with ``yardstick``
    the missing ones are generated too); quantised and emulated ones by ``band`` (an ``ImageBand`` or its file),
    else the committed band of this setting, else one measured here (8 more generations per seed);
    ``band=False`` leaves them unjudged.
    ``require_routing``: a generation in which the backend was never called raises (``fluxlab.load_flux2``
    routes attention through fluxlab). ``warmup``: backends that compile on first use ("auto", True, False or
    names) run 1 step once before the timed runs (``settings["warm_up"]``). ``control``: a ``StepControl`` that
    sees every step and can cancel. Arguments are checked before any generation as ``fluxlab.generate`` checks
    them (``force`` as there); extra keyword arguments go to the pipeline call.
    """
    _skimage()
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    specs = [BackendSpec.parse(b) for b in backends]
    if not specs:
        raise ValueError("compare_images needs at least one backend")
    labels = _unique_labels(specs)
    ref_label = _pick_reference(reference, labels, specs)
    if seed is not None and seeds is not None:
        raise InvalidSettingError(f"compare_images got seed={seed!r} and seeds={seeds!r}: pass one of them (seeds= "
                                  "for several)")
    check_pipe_kwargs(pipe_kwargs, "compare_images")
    seed_list = seed_values([0 if seed is None else seed] if seeds is None else seeds)
    for seed_value in seed_list:  # everything before the first generation, with generate's messages
        check_pipe_generation(pipe, prompt=prompt, width=width, height=height, steps=steps, seed=seed_value,
                              force=force, guidance_scale=pipe_kwargs.get("guidance_scale"),
                              max_sequence_length=pipe_kwargs.get("max_sequence_length", 512))
    seed_list, steps, height, width = [int(s) for s in seed_list], int(steps), int(height), int(width)
    setting = functools.partial(setting_of, pipe, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs)
    if band is not None and band is not False:  # a given band must fit this setting: said before any generation
        band = resolve_band(band, setting())
    control = control if control is not None else StepControl()

    def generate(spec, seed_value, count=True, steps=steps):  # a cancel is checked between generations
        with spec.context():
            return run(pipe, backend=spec.choice, schedule=None, prompt=prompt, seed=seed_value, steps=steps,
                       height=height, width=width, output="np", latents=True, control=control, count_steps=count,
                       partial=True, calls=True, **pipe_kwargs)

    rows = {label: ImageRow(label, seeds=list(seed_list)) for label in labels}
    control.start(len(labels) * len(seed_list) * steps)  # warm-up steps are not counted, but can be cancelled
    warm_up, warmed = run_warm_up(pipe, {label: (spec.name, spec.label) for label, spec in zip(labels, specs)},
                                  lambda label: generate(specs[labels.index(label)], seed_list[0], False, 1), warmup,
                                  height, width, pipe_kwargs.get("max_sequence_length"))
    for label, seconds in warmed.items():
        rows[label].warmup_s = seconds
    control.check()
    per_seed: dict[str, list[dict]] = {label: [] for label in labels}
    first, spreads, ref_judged = None, [], []
    for seed_value in seed_list:
        got = {}  # label -> Run
        for label, spec in zip(labels, specs):
            row = rows[label]
            if row.error is not None:
                continue
            try:
                ran = generate(spec, seed_value)
            except Exception as exc:  # noqa: BLE001 - one backend failing must not end the comparison
                row.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
                continue
            control.check()  # cancelled: stop here, between two steps
            row.attention_calls = None if ran.calls is None else sum(ran.calls.values())  # all on this spec
            row.time_s, peak = ran.total_s, ran.peak.bytes
            row.peak_memory_bytes = peak if row.peak_memory_bytes is None else max(row.peak_memory_bytes, peak)
            if require_routing and not row.attention_calls:
                raise RuntimeError(
                    f"the pipeline never called fluxlab's '{spec.name}' backend during generation: its attention "
                    "does not go through fluxlab, so every backend would give the same image. Load it with "
                    "fluxlab.load_flux2(...) (or attach fluxlab to it) first.")
            got[label] = ran
        if first is None:  # the first seed fixes the reference
            ref_label = _reference_that_ran(reference, ref_label, labels, specs, got, rows)
            first = got
        if ref_label not in got:
            raise BadReferenceError(f"the reference backend '{ref_label}' failed at seed {seed_value}: "
                                    f"{rows[ref_label].error}")
        ref = got[ref_label]
        for label, ran in got.items():
            drift = [rel_l2(a, b) for a, b in zip(ran.latents, ref.latents)]
            per_seed[label].append(image_metrics(ran.image, ref.image) | {
                "latent_drift": drift, "final_latent_rel_l2": drift[-1] if drift else math.nan})
        more = functools.partial(generate, seed_value=seed_value, count=False)
        truth = _truth(specs, labels, got, ref_label, more)
        spreads.append(_exact_spread(specs, labels, got, truth, yardstick, more))
        ref_judged.append(_judge_reference(ref_label, seed_value, ref, truth, spreads[-1]))
        control.check()
    spread = max((v for v in spreads if math.isfinite(v)), default=math.nan)
    low_band = None
    if band is not False and any(_approximate(s) and rows[b].error is None for b, s in zip(labels, specs)):
        low_band = resolve_band(band, setting()) or band_from_outputs(
            _outputs_of(lambda spec, _prompt, seed_value: generate(spec, seed_value, count=False)),
            setting=setting(), prompts=[prompt], seeds=seed_list)
    for label, spec in zip(labels, specs):
        _summarise(rows[label], per_seed[label])
        rows[label].verdict, rows[label].verdict_note = _verdict(rows[label], spec, spread, low_band, band is False,
                                                                 seed_list)
    rows[ref_label].verdict, rows[ref_label].verdict_note = _reference_verdict(ref_judged, spread)
    peak_note = ("torch.cuda.max_memory_allocated per backend's timed run, reset before it"
                 if device_of(pipe).type == "cuda" else "n/a on CPU")
    settings = {"prompt": prompt, "seed": seed_list[0], "seeds": seed_list, "steps": steps, "height": height,
                "width": width, "pipeline": type(pipe).__name__, "warm_up": warm_up, "peak_memory": peak_note,
                **{k: repr(v) for k, v in pipe_kwargs.items()}}
    return ImageComparison(ref_label, list(rows.values()), {label: ran.image for label, ran in first.items()},
                           {label: ran.latents for label, ran in first.items()}, settings, spread=spread,
                           model=model_of(pipe))


def _outputs_of(generate):
    """``outputs_of`` for ``band_from_outputs``: each variant's (image, final latent) by ``generate(spec, prompt,
    seed)``, or its error."""
    def outputs_of(prompt, seed, names):
        got = {}
        for name in names:
            try:
                ran = generate(BackendSpec.parse(name.replace("#rerun", "")), prompt, seed)
                got[name] = (ran.image, ran.latents[-1])
            except Exception as exc:  # noqa: BLE001 - named in the band's error if too few variants ran
                got[name] = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return got

    return outputs_of


def _approximate(spec: BackendSpec) -> bool:
    return is_approximate(registry.get_backend(spec.name))


def _pick_reference(reference, labels, specs) -> str:
    """The reference label: ``reference`` if given, else the first exact backend; an approximate one is refused
    here, before any generation (it would be judged against itself)."""
    if reference is not None:
        label = BackendSpec.parse(reference).label
        if label not in labels:
            raise ValueError(f"reference backend {reference!r} is not among the compared backends "
                             f"({', '.join(labels)})")
        if _approximate(specs[labels.index(label)]):
            raise BadReferenceError(
                f"reference {reference!r} is approximate by design (quantised or emulated), so it cannot be what "
                "the others are measured against; pass an exact one such as reference='sdpa' or 'reference'")
        return label
    exact = [label for label, spec in zip(labels, specs) if not _approximate(spec)]
    if not exact:
        raise BadReferenceError(
            f"every backend here is approximate ({', '.join(labels)}): none can be the reference they are measured "
            "against; add an exact one ('sdpa', or 'reference' in float64) to the backends")
    return exact[0]


def _reference_that_ran(reference, ref_label, labels, specs, got, rows) -> str:
    """At the first seed: ``ref_label`` if it ran; else, unless the user named it, the first exact one that did."""
    if ref_label in got:
        return ref_label
    if reference is not None or not got:
        raise BadReferenceError(f"the reference backend '{ref_label}' failed: {rows[ref_label].error}; "
                                "pass an exact backend that runs here, e.g. reference='sdpa'")
    found = next((label for label, spec in zip(labels, specs) if label in got and not _approximate(spec)), None)
    if found is None:
        errors = "; ".join(f"{row.backend}: {row.error}" for row in rows.values() if row.error) or "none ran"
        raise BadReferenceError(f"no exact backend generated an image to compare with ({errors}); add one that "
                                "runs here ('sdpa' or 'reference') to the backends")
    return found


def _plain_run(specs, labels, got, name):
    """The run at this seed of backend ``name`` as registered (no kernel options, no torch knobs), or None."""
    return next((got[label] for label, spec in zip(labels, specs)
                 if spec.name == name and not spec.options and not spec.knobs and label in got), None)


def _truth(specs, labels, got, ref_label, generate):
    """The float64 ``reference`` backend's Run at this seed: from the run if it is among the backends, else
    generated once more. Refuses the comparison if it cannot run (the reference stays unjudged)."""
    found = _plain_run(specs, labels, got, "reference")
    if found is not None:
        return found
    try:
        return generate(BackendSpec.parse("reference"))
    except Exception as exc:  # noqa: BLE001 - reported as the reason the reference cannot be judged
        raise BadReferenceError(
            f"the reference backend '{ref_label}' cannot be judged: the float64 'reference' backend it is checked "
            f"against failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); allow 'reference' on this "
            "model, or pass reference='reference'") from exc


def _exact_spread(specs, labels, got, truth, generate_more: bool, generate) -> float:
    """The largest final-latent rel-L2 between two yardstick kernels at one seed (NaN with fewer than two): those
    among the backends, the truth, and with ``generate_more`` the others generated here."""
    finals = {}
    for name in YARDSTICK_BACKENDS:
        ran = _plain_run(specs, labels, got, name)
        if ran is None and name == "reference":
            ran = truth
        if ran is None and generate_more:
            try:
                ran = generate(BackendSpec.parse(name))
            except Exception:  # noqa: BLE001 - a kernel the model does not allow is simply not part of the spread
                continue
        if ran is not None:
            finals[name] = ran.final
    return exact_spread(finals[name] for name in sorted(finals))


def _judge_reference(ref_label, seed, ran, truth, spread) -> float:
    """The reference's final-latent rel-L2 against the float64 truth at one seed; NaN/inf, or a value the
    exact-kernel rule fails, refuses the comparison with the reason."""
    if not np.isfinite(ran.image).all() or any(not torch.isfinite(x).all() for x in ran.latents):
        raise BadReferenceError(
            f"the reference backend '{ref_label}' gives NaN/inf at seed {seed}: nothing can be measured against it; "
            "pass an exact, finite one such as reference='sdpa' or 'reference'")
    rel = rel_l2(ran.final, truth.final)
    verdict, why = judge_exact_image(rel, spread)
    if verdict == FAIL:
        raise BadReferenceError(
            f"the reference backend '{ref_label}' is not exact at seed {seed}: against the float64 'reference' "
            f"backend its {why}; the others would be judged against a wrong image. Pass an exact one such as "
            "reference='sdpa' or 'reference'")
    return rel


def _reference_verdict(rels: list[float], spread: float) -> tuple[str, str]:
    verdict, why = judge_exact_image(max(rels) if rels else math.nan, spread)
    if rels and max(rels) == 0.0:
        return verdict, "the reference: the float64 'reference' backend, finite"
    return verdict, f"the reference, against the float64 'reference' backend: {why}"


def _summarise(row: ImageRow, seeds_metrics: list[dict]) -> None:
    """Means over seeds into the row's fields, the worst seed (NaN counts as the worst) into the *_worst ones."""
    if not seeds_metrics:
        return
    with np.errstate(invalid="ignore"):
        for key in ("psnr", "ssim", "max_abs_pixel", "mean_abs_pixel", "final_latent_rel_l2"):
            setattr(row, key, float(np.mean([m[key] for m in seeds_metrics])))
    row.latent_drift = seeds_metrics[0]["latent_drift"]
    row.psnr_worst, row.ssim_worst = (min((m[key] for m in seeds_metrics),
                                          key=lambda v: -math.inf if math.isnan(v) else v) for key in ("psnr", "ssim"))
    row.final_latent_rel_l2_worst = max((m["final_latent_rel_l2"] for m in seeds_metrics),
                                        key=lambda v: math.inf if math.isnan(v) else v)


def _verdict(row: ImageRow, spec: BackendSpec, spread: float, band, unjudged: bool, seeds) -> tuple[str | None, str]:
    if row.error is not None:
        return FAIL, "generation failed: " + row.error
    latent = row.final_latent_rel_l2_worst
    if not math.isfinite(latent) or any(not math.isfinite(d) for d in row.latent_drift):
        return FAIL, "NaN/inf in the latents or the image"
    if _approximate(spec):
        if unjudged:
            return None, "not judged (band=False)"
        return judge_with_band(from_image_metrics(row.ssim_worst, row.psnr_worst, latent), band, LOW_PRECISION)
    return judge_exact_image(latent, spread, f"the exact kernels {', '.join(YARDSTICK_BACKENDS)} measured here at "
                                             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")


def _unique_labels(specs) -> list[str]:
    """Each spec's label; a repeated one gets '#2', '#3'."""
    labels, seen = [], {}
    for spec in specs:
        seen[spec.label] = seen.get(spec.label, 0) + 1
        labels.append(spec.label if seen[spec.label] == 1 else f"{spec.label}#{seen[spec.label]}")
    return labels


# -- the band of a user's pipeline -----------------------------------------------------------------------------------


def measure_image_band(pipe, *, prompts=DEFAULT_BAND_PROMPTS, seeds=(0, 1), steps: int = 4, height: int | None = 64,
                       width: int | None = 64, classes=CLASSES, keep_outputs: bool = False, card: str | None = None,
                       progress=None, **pipe_kwargs) -> ImageBand:
    """Measure the image band of ``pipe`` in this setting: at every prompt x seed one generation per legitimate
    change (``fluxlab.compare.bands.VARIANTS``), then every pair's distances within a class (docs/verdicts.md).
    ``classes``: which bands (4 generations a cell each). ``keep_outputs``: keep the float64 reference's final
    latents, so that a band of another card can be merged with this one (``merge_bands``); ``card``: its name
    there. Extra keyword arguments go to the pipeline call. ``save(path)`` writes it; pass it (or the path) as
    ``band=`` to ``compare_images``, ``frontier``, ``locate_drift`` or ``fluxlab.decide.fidelity.image_verdict``."""
    classes = check_classes(classes)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
    if not prompts or not seeds:
        raise ImageBandError("measure_image_band needs at least one prompt and one seed")

    def outputs_of(prompt, seed, names):
        specs = [name.replace("#rerun", "") for name in names]
        result = compare_images(pipe, specs, prompt=prompt, seeds=[seed], steps=steps, height=height, width=width,
                                reference="reference", band=False, **pipe_kwargs)
        labels = _unique_labels([BackendSpec.parse(spec) for spec in specs])
        return {name: (result.images[label], result.latents[label][-1]) if label in result.latents
                else (result.metrics[label].error or "no image") for name, label in zip(names, labels)}

    setting = setting_of(pipe, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs)
    return band_from_outputs(outputs_of, setting=setting, prompts=prompts, seeds=seeds, classes=classes,
                             keep_outputs=keep_outputs, card=card, progress=progress)


def band_for(pipe, band, *, prompt: str, seeds, steps: int, height, width, pipe_kwargs: dict,
             classes=CLASSES) -> ImageBand:
    """The band that judges a generation of ``pipe``: ``band`` (checked against the setting), else the committed
    band of this setting, else one of ``classes`` measured here at ``prompt`` and ``seeds``."""
    setting = setting_of(pipe, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs)
    return resolve_band(band, setting) or measure_image_band(
        pipe, prompts=[prompt], seeds=list(seeds), steps=steps, height=setting["height"], width=setting["width"],
        classes=classes, **pipe_kwargs)
