"""``fluxlab.frontier``: what each schedule of a fast kernel buys in transformer time per step and costs in image
fidelity against the exact kernel, Pareto set marked."""

from __future__ import annotations

import dataclasses
import math
import statistics

from ..compare.images import band_for
from ..compare.bands import EXACT, LOW_PRECISION, from_image_metrics, judge_with_band
from ..compare.tolerances import FAIL, PASS
from ..models.attach import check_allowed, state_of
from ..models.limits import diffusers_names
from ..models.schedule import Rule, Schedule
from ..results import Result, markdown_table, model_of
from ..util import json_safe
from .fidelity import fidelity
from .files import check_count, finish_figure, new_figure, progress_bar
from .runs import DecideInputError, Runner, as_schedule, band_kind, check_generation_args, describe, seed_list

CULPRIT_SHARE = 0.25  # culprit cells kept exact: those with at least this share of the strongest one's drift
MAX_CULPRITS = 4


@dataclasses.dataclass
class FrontierRow:
    name: str
    candidate: str | None  # None for the exact reference row and user schedules
    schedule: str
    step_ms: float = math.nan
    speedup: float = math.nan  # exact step time / this step time
    final_latent_rel_l2: float = math.nan  # worst seed
    ssim: float = math.nan  # worst seed
    psnr: float = math.nan  # worst seed, dB
    verdict: str = ""  # in image bands (compare.bands): the low-precision band for quantised/emulated schedules
    verdict_note: str = ""
    pareto: bool = False
    error: str | None = None


@dataclasses.dataclass(repr=False)
class Frontier(Result):
    """Each schedule's step time against its image fidelity, with the Pareto set (and the result protocol)."""

    rows: list[FrontierRow]
    exact: str
    settings: dict
    drift_maps: dict = dataclasses.field(default_factory=dict)  # candidate -> DriftMap (with locate)
    model: dict | None = None  # the pipeline it was measured on (results.model_of)

    def headline(self) -> str:
        s = self.settings
        return (f"Frontier against `{self.exact}` (prompt {s['prompt']!r}, seeds {s['seeds']}, {s['steps']} steps): "
                f"step time is the transformer's per denoising step (median of {s['repeats']} after a warm-up); "
                "fidelity is the worst seed's. **P** marks the Pareto set.")

    def table_rows(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.rows]

    @property
    def pareto(self) -> list[FrontierRow]:
        return sorted((r for r in self.rows if r.pareto), key=lambda r: r.step_ms)

    def to_markdown(self) -> str:
        rows = [{"schedule": r.name, "step (ms)": r.step_ms, "speed-up (x)": r.speedup,
                 "final-latent rel-L2": r.final_latent_rel_l2, "SSIM": r.ssim, "PSNR (dB)": r.psnr,
                 "verdict": r.verdict, "Pareto": "P" if r.pareto else "", "error": r.error} for r in self.rows]
        return f"{self.headline()}\n\n{markdown_table(rows)}"

    def __repr__(self):
        return (f"Frontier({len(self.rows)} schedules against {self.exact}; Pareto: "
                f"{', '.join(r.name for r in self.pareto)})")

    def as_dict(self) -> dict:
        return {"exact": self.exact, "settings": self.settings,
                "rows": [json_safe(dataclasses.asdict(r)) for r in self.rows],
                "drift_maps": {k: v.as_dict() for k, v in self.drift_maps.items()}}

    def figure(self, path=None):
        """Step time against final-latent rel-L2 (log), the Pareto line through the best rows."""
        fig, ax = new_figure(path, figsize=(7.5, 4.5))
        ok = [r for r in self.rows if r.error is None and math.isfinite(r.step_ms)]
        floor = min([r.final_latent_rel_l2 for r in ok if r.final_latent_rel_l2 > 0] or [1e-7]) / 10

        def height(row):  # the exact row sits at 0: drawn at the floor
            return max(row.final_latent_rel_l2, floor)

        for r in ok:
            colour = {"pass": "tab:green", "warn": "tab:orange"}.get(r.verdict, "tab:red")
            ax.scatter(r.step_ms, height(r), color=colour, s=40, zorder=3)
            ax.annotate(r.name, (r.step_ms, height(r)), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.plot([r.step_ms for r in self.pareto], [height(r) for r in self.pareto], "k--", lw=1, label="Pareto set")
        ax.set_yscale("log")
        ax.set_xlabel("transformer time per step (ms, median)")
        ax.set_ylabel(f"final-latent rel-L2 vs {self.exact} (worst seed)")
        ax.set_title("speed vs fidelity (green pass, orange warn, red fail)", fontsize=9)
        ax.legend(fontsize=8)
        return finish_figure(fig, path)


def exact_ends_label(exact: str, candidate: str, k: int) -> str:
    """The row name of ``Schedule.exact_ends(exact, candidate, first=k, last=k)`` (k = 0: the candidate everywhere)."""
    return f"{candidate} everywhere" if k == 0 else f"{candidate}, {exact} at {k} first+last"


def default_schedules(exact: str, candidate: str, steps: int) -> dict[str, Schedule]:
    """The candidate everywhere, then with ``exact`` at the k = 1..3 first and last steps (where they fit)."""
    return {exact_ends_label(exact, candidate, k): Schedule.exact_ends(exact, candidate, first=k, last=k) if k
            else Schedule(default=candidate) for k in range(4) if 2 * k < steps}


def except_culprits(exact: str, candidate: str, drift) -> Schedule | None:
    """The candidate everywhere except the strongest culprit cells of a DriftMap, which stay exact."""
    cells = [c for c in drift.culprits if c.contribution > 0]
    if not cells:
        return None
    kept = [c for c in cells if c.contribution >= CULPRIT_SHARE * cells[0].contribution][:MAX_CULPRITS]
    return Schedule(default=candidate, rules=tuple(Rule(exact, layers=c.layers, steps=c.steps) for c in kept))


@diffusers_names
def frontier(pipe, candidates, *, schedules=None, prompt: str, seeds=(0,), steps: int, exact: str | None = None,
             height: int | None = None, width: int | None = None, repeats: int = 3, locate: bool = True,
             drift_maps: dict | None = None, progress: bool = False, band=None, **pipe_kwargs) -> Frontier:
    """Step time and fidelity of each candidate under each schedule, against ``exact`` (default: the automatic
    pick); Pareto set marked. ``schedules``: None (per candidate: everywhere, exact ends k = 1..3 and, with
    ``locate``, everywhere but the culprits of ``locate_drift`` or of ``drift_maps``), or Schedules to measure
    instead (a list, or a dict by name). A failing schedule is a row with its error. Details: docs/decide.md.
    """
    from ..dispatch import default_backend
    from .drift import locate_drift

    check_generation_args(prompt, steps)
    seeds = seed_list(seeds)
    check_count(repeats, f"repeats={repeats!r} must be a positive number of timed generations")
    state = state_of(pipe)
    exact = exact or default_backend() or "sdpa"
    check_allowed(exact, state.allowed)
    candidates = [candidates] if isinstance(candidates, str) else list(candidates or [])
    for name in candidates:
        check_allowed(name, state.allowed)  # unknown or disallowed names raise here, before any generation
    plans: list[tuple[str, str | None, Schedule]] = [(f"{exact} (exact)", None, Schedule(default=exact))]
    if schedules is None:
        plans += [(label, name, s) for name in candidates
                  for label, s in default_schedules(exact, name, steps).items()]
    else:
        named = schedules.items() if isinstance(schedules, dict) else ((describe(s), s) for s in schedules)
        plans += [(label, None, as_schedule(pipe, s, f"schedule {label!r}")) for label, s in named]
    if not candidates and schedules is None:
        raise DecideInputError("frontier needs candidates (fast backend names) or schedules to measure")

    bar = progress_bar(progress, "frontier")
    runner = Runner(pipe, prompt=prompt, seed=seeds[0], steps=steps, height=height, width=width,
                    pipe_kwargs=pipe_kwargs, progress=bar.update)
    known, drift_maps = dict(drift_maps or {}), {}
    with bar:
        for name in candidates if locate and schedules is None else ():
            try:
                drift_maps[name] = known[name] if name in known else locate_drift(
                    pipe, exact, name, prompt=prompt, seed=seeds[0], steps=steps, height=height, width=width, beam=1,
                    **pipe_kwargs)
            except Exception as exc:  # noqa: BLE001 - a failing candidate is a row, the frontier goes on
                plans.append((f"{name} except culprits", name, None))
                drift_maps[name] = exc
                continue
            schedule = except_culprits(exact, name, drift_maps[name])
            if schedule is not None:
                plans.append((f"{name} except {len(schedule.rules)} culprit cell(s)", name, schedule))
        references = {seed: runner.run(plans[0][2], seed=seed, image=True) for seed in seeds}
        low = any(band_kind(sch) == LOW_PRECISION for _, _, sch in plans if sch is not None)
        band = band_for(pipe, band, prompt=prompt, seeds=seeds, steps=steps, height=height, width=width,
                        pipe_kwargs=pipe_kwargs, classes=(EXACT, LOW_PRECISION) if low else (EXACT,))
        rows = [_measure(runner, label, candidate, schedule, seeds, references, repeats, drift_maps, band)
                for label, candidate, schedule in plans]
    exact_ms = rows[0].step_ms
    for row in rows:
        row.speedup = exact_ms / row.step_ms if row.step_ms else math.nan
    mark_pareto(rows)
    settings = {"prompt": prompt, "seeds": seeds, "steps": steps, "height": height, "width": width,
                "repeats": repeats, "candidates": candidates, "generations": runner.count,
                **{k: repr(v) for k, v in pipe_kwargs.items()}}
    return Frontier(rows, exact, settings, {k: v for k, v in drift_maps.items() if not isinstance(v, Exception)},
                    model=model_of(pipe))


def _measure(runner, label, candidate, schedule, seeds, references, repeats, drift_maps, band) -> FrontierRow:
    row = FrontierRow(label, candidate, describe(schedule) if schedule is not None else "")
    if schedule is None:
        exc = drift_maps.get(candidate)
        row.verdict, row.error = FAIL, _error_text(exc) if isinstance(exc, Exception) else "no schedule"
        return row
    try:
        numbers = [fidelity(runner.run(schedule, seed=seed, image=True), references[seed]) for seed in seeds]
        times = [runner.run(schedule).transformer_s / runner.steps for _ in range(repeats)]
    except Exception as exc:  # noqa: BLE001 - a failing candidate is a row with its error; the frontier goes on
        row.verdict, row.error = FAIL, _error_text(exc)
        return row
    row.step_ms = statistics.median(times) * 1e3
    row.final_latent_rel_l2 = max(n["final_latent_rel_l2"] for n in numbers)
    row.ssim = min(n["ssim"] for n in numbers)
    row.psnr = min(n["psnr"] for n in numbers)
    verdict, row.verdict_note = judge_with_band(from_image_metrics(row.ssim, row.psnr, row.final_latent_rel_l2),
                                                band, band_kind(schedule))
    row.verdict = PASS if row.final_latent_rel_l2 == 0 else verdict
    return row


def mark_pareto(rows) -> None:
    """Set ``row.pareto`` on FrontierRows: no other row is at least as fast and as faithful (final-latent rel-L2),
    and strictly better in one of the two. Rows with an error or a missing number are never in the set."""
    ok = [r for r in rows if r.error is None and math.isfinite(r.step_ms) and math.isfinite(r.final_latent_rel_l2)]
    for r in ok:
        r.pareto = not any(o is not r and o.step_ms <= r.step_ms and o.final_latent_rel_l2 <= r.final_latent_rel_l2
                           and (o.step_ms < r.step_ms or o.final_latent_rel_l2 < r.final_latent_rel_l2) for o in ok)


def _error_text(exc) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
