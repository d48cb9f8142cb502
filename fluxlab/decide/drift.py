"""``fluxlab.locate_drift``: which attention layers x denoising steps make an image drift, found coarse to fine by
halving regions of the grid and splitting only the ``beam`` strongest per level (docs/decide.md)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..models.limits import diffusers_names
from ..results import Result, markdown_table, model_of
from .files import check_count, finish_figure, new_figure, progress_bar
from .runs import Cells, DecideInputError, Run, Runner, as_schedule, band_kind, cell_schedule, describe, rel_l2

# A drift is "localised" when the strongest single region found explains at least this share of the all-bad drift.
LOCALISED_SHARE = 0.5
DEFAULT_BEAM = 2


def generation_bound(layers: int, steps: int, beam: int = DEFAULT_BEAM) -> int:
    """The most generations locate_drift runs for a grid of ``layers`` x ``steps``: the two end runs, then two
    halves for each of at most ``beam`` regions per level, over ceil(log2 N) + ceil(log2 T) levels."""
    levels = math.ceil(math.log2(max(layers, 1))) + math.ceil(math.log2(max(steps, 1)))
    return 2 + 2 * beam * levels


@dataclasses.dataclass(frozen=True)
class Culprit:
    """One region found by locate_drift: ``layer`` (a name, or "first..last (n layers)" for an unsplit group),
    ``steps`` (0-based), and ``contribution``: final-latent rel-L2 when only it is switched to ``bad``."""

    layer: str
    steps: tuple[int, ...]
    contribution: float
    layers: tuple[str, ...] = ()

    def __str__(self):
        return f"{self.layer} at step{'s' if len(self.steps) > 1 else ''} {_steps_text(self.steps)}: " \
               f"{self.contribution:.3g}"


def _steps_text(steps) -> str:
    steps = list(steps)
    if len(steps) > 2 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ", ".join(map(str, steps))


def _group_label(layers: tuple[str, ...]) -> str:
    return layers[0] if len(layers) == 1 else f"{layers[0]}..{layers[-1]} ({len(layers)} layers)"


@dataclasses.dataclass(repr=False)
class DriftMap(Result):
    """Where switching ``good`` -> ``bad`` makes the final latents drift: culprits, grid, all-bad drift, figure
    (and the result protocol: ``to_dataframe``, ``to_markdown``, ``save``, ``fluxlab.results``)."""

    good: str
    bad: str
    layers: list[str]
    steps: int
    culprits: list[Culprit]  # the search's leaves (regions scored, not split further), strongest first
    grid: np.ndarray  # [layers, steps]: single-cell contributions; NaN where the search did not split that far
    all_bad_drift: float  # final-latent rel-L2 with bad everywhere
    drift_per_step: dict[str, list[float]]  # "all bad" / the top culprit -> rel-L2 vs all-good after each step
    generations: int
    bound: int
    complete: bool  # the strongest regions were split down to single cells within the budget
    note: str = ""
    settings: dict = dataclasses.field(default_factory=dict)
    regions: list[Culprit] = dataclasses.field(default_factory=list)  # every region scored, in search order
    # What regenerating a cell needs beyond ``settings``: good and bad as given (names or Schedules), and the
    # extra pipeline arguments themselves (``settings`` keeps only their repr).
    plans: tuple = ()
    pipe_kwargs: dict = dataclasses.field(default_factory=dict)
    model: dict | None = None  # the pipeline it was located on (results.model_of)
    # The image band the drift is counted in (final-latent rel-L2; NaN: no band for this setting) and its source.
    band: float = math.nan
    band_source: str = ""

    @property
    def bands_away(self) -> float:
        """The all-bad drift in bands of legitimate variation (NaN without a band)."""
        return self.all_bad_drift / self.band if self.band > 0 else math.nan

    @property
    def top(self) -> Culprit | None:
        return self.culprits[0] if self.culprits else None

    @property
    def share(self) -> float:
        """Strongest single region's contribution / the all-bad drift (>= LOCALISED_SHARE: localised)."""
        if not self.culprits or not self.all_bad_drift or not math.isfinite(self.all_bad_drift):
            return math.nan
        return self.culprits[0].contribution / self.all_bad_drift

    @property
    def localised(self) -> bool:
        return bool(self.share >= LOCALISED_SHARE)

    @property
    def kind(self) -> str:
        """"localised" or "diffuse"; else why neither can be said (no drift, NaN/Inf latents, no region scored)."""
        if not math.isfinite(self.all_bad_drift):
            return "not finite (bad gives NaN/Inf latents: a broken kernel, not drift)"
        if not self.all_bad_drift:
            return "none (bad gives the same latents as good)"
        if not self.culprits or not math.isfinite(self.share):
            return "undecided (the budget ended before any region was scored)"
        return "localised" if self.localised else "diffuse"

    def cells(self, n: int = 5) -> list[Culprit]:
        """The strongest single-cell (one layer, one step) culprits."""
        return [c for c in self.culprits if len(c.layers) == 1 and len(c.steps) == 1][:n]

    def headline(self) -> str:
        return (f"Drift of `{self.bad}` against `{self.good}`: final-latent rel-L2 with `{self.bad}` everywhere "
                f"{self.all_bad_drift:.3g}{self._in_bands()}; the strongest region alone gives {self.share:.0%} of "
                f"it: **{self.kind}**. {self.generations} generations (bound {self.bound}).")

    def _in_bands(self) -> str:
        if not math.isfinite(self.bands_away):
            return f" ({self.band_source})" if self.band_source else ""
        return f" = {self.bands_away:.3g} bands (band {self.band:.3g} from {self.band_source})"

    def table_rows(self) -> list[dict]:
        """Every culprit region, strongest first."""
        return [{"rank": i, "layer": c.layer, "steps": _steps_text(c.steps), "contribution": c.contribution,
                 "share": c.contribution / self.all_bad_drift if self.all_bad_drift else math.nan}
                for i, c in enumerate(self.culprits, 1)]

    def to_markdown(self, n: int = 8) -> str:
        """The ``n`` strongest culprits (contribution: final-latent rel-L2 with only that region bad)."""
        note = f"{self.note}\n\n" if self.note else ""
        return f"{self.headline()}\n\n{note}{markdown_table(self.table_rows()[:n])}"

    def as_dict(self) -> dict:
        return {"good": self.good, "bad": self.bad, "layers": self.layers, "steps": self.steps,
                "all_bad_drift": self.all_bad_drift, "share": self.share, "kind": self.kind,
                "generations": self.generations, "bound": self.bound, "complete": self.complete, "note": self.note,
                "culprits": [{"layer": c.layer, "layers": list(c.layers), "steps": list(c.steps),
                              "contribution": c.contribution} for c in self.culprits],
                "grid": [[None if math.isnan(v) else v for v in row] for row in self.grid.tolist()],
                "drift_per_step": self.drift_per_step, "settings": self.settings, "band": self.band,
                "band_source": self.band_source, "bands_away": self.bands_away}

    def figure(self, path=None):
        """Heatmap of single-cell contributions (layers x steps) beside the per-step drift of the latents."""
        fig, (heat, curve) = new_figure(path, ncols=2, figsize=(11, 0.35 * len(self.layers) + 2.2),
                                        gridspec_kw={"width_ratios": [1.2, 1]})
        image = heat.imshow(np.ma.masked_invalid(self.grid), aspect="auto", cmap="magma", interpolation="nearest",
                            vmin=0)
        heat.set_yticks(range(len(self.layers)), [n.removesuffix(".attn") for n in self.layers], fontsize=8)
        heat.set_xticks(range(self.steps))
        heat.set_xlabel("denoising step")
        heat.set_title("bad in one cell only (blank: not split)", fontsize=9)
        fig.colorbar(image, ax=heat, label="final-latent rel-L2")
        for label, values in self.drift_per_step.items():
            curve.plot(range(len(values)), values, marker="o", label=label)
        curve.set_yscale("symlog", linthresh=1e-6)
        curve.set_xlabel("denoising step")
        curve.set_ylabel(f"latent rel-L2 vs {self.good}")
        curve.set_title(f"cumulative drift ({self.kind})", fontsize=9)
        curve.legend(fontsize=8)
        fig.suptitle(f"good: {self.good}   bad: {self.bad}", fontsize=9)
        return finish_figure(fig, path)

    def replay(self, pipe) -> CellReplay:
        """Regenerate this map's runs on ``pipe`` (the pipeline it was located on): all good, all bad, or bad in
        one cell only, with the same prompt, seed, steps, size and schedules (what ``DriftExplorer`` shows)."""
        return CellReplay(self, pipe)

    def __repr__(self):
        top = f", top {self.top}" if self.top else ""
        return f"DriftMap({self.bad} vs {self.good}: {self.kind}, {self.generations} generations{top})"


class CellReplay:
    """One DriftMap's generations again, as locate_drift ran them: ``run(None)`` all good, ``run(all_cells)`` all
    bad, ``run(cell(layer, step))`` bad in that cell only. ``runner.count`` says how many ran."""

    def __init__(self, drift: DriftMap, pipe):
        if len(drift.plans) != 2:
            raise DecideInputError("this DriftMap does not carry its good and bad schedules (it was not made by "
                                   "fluxlab.locate_drift); locate it again with locate_drift to replay its cells")
        self.drift = drift
        self.good = as_schedule(pipe, drift.plans[0], "good")
        self.bad = as_schedule(pipe, drift.plans[1], "bad")
        s = drift.settings
        self.runner = Runner(pipe, prompt=s["prompt"], seed=s["seed"], steps=drift.steps, height=s["height"],
                             width=s["width"], pipe_kwargs=drift.pipe_kwargs)
        if self.runner.layer_names != list(drift.layers):
            raise DecideInputError(f"this pipeline's attention layers ({len(self.runner.layer_names)}) are not the "
                                   f"DriftMap's ({len(drift.layers)}); replay it on the pipeline it was located on")

    @property
    def all_cells(self) -> Cells:
        return Cells(tuple(self.drift.layers), tuple(range(self.drift.steps)))

    def cell(self, layer: str, step: int) -> Cells:
        """The single cell ``layer`` (a name of ``drift.layers``) at ``step`` (0-based), checked."""
        if layer not in self.drift.layers:
            raise DecideInputError(f"layer {layer!r} is not in this DriftMap; e.g. {self.drift.layers[0]!r}")
        if not isinstance(step, int) or not 0 <= step < self.drift.steps:
            raise DecideInputError(f"step={step!r}: this DriftMap has steps 0..{self.drift.steps - 1}")
        return Cells((layer,), (step,))

    def run(self, cells: Cells | None, *, control=None) -> Run:
        """One generation (with its image) with ``bad`` inside ``cells`` and ``good`` elsewhere."""
        return self.runner.run(cell_schedule(self.good, self.bad, cells), image=True, control=control)


def _halves(region: Cells) -> list[Cells]:
    """Split the layers first; a single layer's steps next."""
    if len(region.layers) > 1:
        mid = len(region.layers) // 2
        return [Cells(region.layers[:mid], region.steps), Cells(region.layers[mid:], region.steps)]
    mid = len(region.steps) // 2
    return [Cells(region.layers, region.steps[:mid]), Cells(region.layers, region.steps[mid:])]


@diffusers_names
def locate_drift(pipe, good, bad, *, prompt: str, seed: int = 0, steps: int, height: int | None = None,
                 width: int | None = None, beam: int = DEFAULT_BEAM, budget: int | None = None,
                 progress: bool = False, band=None, **pipe_kwargs) -> DriftMap:
    """Find the (attention layer x denoising steps) cells that, switched alone from ``good`` to ``bad`` (backend
    names or Schedules), move the final latents most. ``beam``: regions split further per level; ``budget``: a cap
    on generations (default :func:`generation_bound`); ``band``: the image band the drift is counted in (default:
    the committed one of this setting). Extra keyword arguments go to the pipeline call. Details: docs/decide.md.
    """
    check_count(beam, f"beam={beam!r} must be a positive integer (regions split per level); e.g. beam=2")
    good_schedule = as_schedule(pipe, good, "good")
    bad_schedule = as_schedule(pipe, bad, "bad")
    band_value, band_source = _band(pipe, band, bad_schedule, steps, height, width, pipe_kwargs)  # before generating
    bar = progress_bar(progress, "locate-drift")
    runner = Runner(pipe, prompt=prompt, seed=seed, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs,
                    progress=bar.update)
    layers = runner.layer_names
    bound = generation_bound(len(layers), steps, beam)
    budget = bound if budget is None else budget
    check_count(budget, f"budget={budget!r}: locate_drift needs at least 2 generations (all-good and all-bad); the "
                f"full search here takes at most {bound}", minimum=2)
    bar.total = min(budget, bound)
    with bar:
        good_run = runner.run(cell_schedule(good_schedule, bad_schedule, None))
        whole = Cells(tuple(layers), tuple(range(steps)))
        bad_run = runner.run(cell_schedule(good_schedule, bad_schedule, whole))
        all_bad = rel_l2(bad_run.final, good_run.final)
        scored: dict[Cells, float] = {whole: all_bad}
        runs = {whole: bad_run}
        frontier, note, split = [whole], "", {whole}
        while frontier:
            children = [child for region in frontier if region.size > 1 for child in _halves(region)]
            if not children:
                break
            if runner.count + len(children) > budget:
                note = (f"budget of {budget} generations too small to split further: {len(children)} more were "
                        f"needed after {runner.count}; the culprits below are regions, not single cells (pass "
                        f"budget={bound} or more for single cells).")
                break
            split.update(r for r in frontier if r.size > 1)
            for child in children:
                run = runner.run(cell_schedule(good_schedule, bad_schedule, child))
                scored[child], runs[child] = rel_l2(run.final, good_run.final), run
            strongest = sorted(children, key=lambda c: -_key(scored[c]))
            frontier = [c for c in strongest[:beam] if scored[c] > 0]

    def culprit(region: Cells) -> Culprit:
        return Culprit(_group_label(region.layers), region.steps, scored[region], region.layers)

    def drift_of(run: Run) -> list[float]:
        return [rel_l2(a, b) for a, b in zip(run.latents, good_run.latents)]

    # The culprits are the leaves of the search: regions scored but not split (single cells where it got there).
    leaves = sorted((r for r in scored if r not in split), key=lambda r: (-_key(scored[r]), r.size))
    culprits = [culprit(r) for r in leaves]
    grid = np.full((len(layers), steps), np.nan)
    for region, value in scored.items():
        if region.size == 1:
            grid[layers.index(region.layers[0]), region.steps[0]] = value
    per_step = {"bad everywhere": drift_of(bad_run)}
    if leaves:
        per_step[f"only {culprits[0].layer.removesuffix('.attn')} @ {_steps_text(leaves[0].steps)}"] = drift_of(
            runs[leaves[0]])
    complete = not note and bool(leaves) and leaves[0].size == 1
    settings = {"prompt": prompt, "seed": seed, "steps": steps, "height": height, "width": width, "beam": beam,
                "budget": budget, **{k: repr(v) for k, v in pipe_kwargs.items()}}
    return DriftMap(describe(good), describe(bad), layers, steps, culprits, grid, all_bad, per_step, runner.count,
                    bound, complete, note, settings, [culprit(r) for r in scored], (good, bad), dict(pipe_kwargs),
                    model=model_of(pipe), band=band_value, band_source=band_source)


def _band(pipe, band, bad_schedule, steps, height, width, pipe_kwargs) -> tuple[float, str]:
    """(final-latent rel-L2 band, its source) for counting the drift in bands; (NaN, why not) without one."""
    from ..compare.bands import resolve_band, setting_of

    found = resolve_band(band, setting_of(pipe, steps=steps, height=height, width=width, pipe_kwargs=pipe_kwargs))
    if found is None:
        return math.nan, ("no image band for this setting: measure one with fluxlab.compare.measure_image_band and "
                          "pass band=")
    kind = band_kind(bad_schedule)
    return found.band(kind, "final_latent_rel_l2"), found.source_text(kind)


def _key(value: float) -> float:
    return math.inf if math.isnan(value) else value  # NaN latents are the strongest drift there is
