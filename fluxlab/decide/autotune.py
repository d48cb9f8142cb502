"""``fluxlab.autotune``: per attention layer, the fastest kernel whose verdict on that layer's real inputs (against
float64, never against the incumbent kernel) is pass; then confirmed on the whole step (``confirm.py``)."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
from pathlib import Path

from .._compat import moved
from .. import registry
from ..choice import BackendChoice
from ..errors import (FluxlabError, InvalidPlanError, PlanMismatchError, PlanNotFoundError,  # noqa: F401
                      UnknownBackendError)
from ..models.attach import check_allowed, state_of
from ..models.limits import diffusers_names
from ..models.runner import run
from ..models.schedule import Schedule
from ..results import Result, format_cell, markdown_table, model_of
from ..util import json_safe
from .confirm import Confirmation, confirm_plan, record_step
from .files import check_count, finish_figure, new_figure, progress_bar
from .runs import DecideInputError, approximate, check_generation_args, seed_list

PLAN_FORMAT = "fluxlab-autotune/1"


@dataclasses.dataclass
class Measurement:
    """One candidate on one layer: median time over the captured inputs' calls, worst verdict, why."""

    layer: str
    backend: str
    verdict: str  # pass / warn / fail / skip
    time_ms: float = math.nan
    rel_l2: float = math.nan  # worst over the layer's inputs, vs float64
    rel_l2_ratio: float = math.nan  # to the yardstick
    quantised: bool = False
    error: str | None = None
    note: str = ""


@dataclasses.dataclass(repr=False)
class AutotuneResult(Result):
    """Per-layer backend choices with every measurement behind them; ``schedule`` goes to ``fluxlab.set_schedule``
    (and the result protocol: ``to_dataframe`` has one row per layer and candidate)."""

    choices: dict[str, str]  # layer -> backend
    measurements: list[Measurement]
    reasons: dict[str, str]  # backend -> why it was never chosen (raised, NaN, failed, quantised not allowed...)
    platform: dict
    versions: dict
    settings: dict
    automatic: dict[str, str] = dataclasses.field(default_factory=dict)  # layer -> what the automatic choice ran
    image_verdict: str | None = None
    image_note: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    confirmation: Confirmation | None = None  # the step-level timings and which variant was kept (None: not run)
    model: dict | None = None  # the pipeline it was tuned on (results.model_of); None for records

    def headline(self) -> str:
        return (f"Autotune on {self.platform.get('device_name')} ({self.platform.get('vendor')}), torch "
                f"{self.versions.get('torch')}: per layer the fastest candidate whose attention verdict is pass "
                f"(times in ms: median of the timed calls per captured input, averaged over the layer's inputs)"
                f"{CONFIRMED if self.confirmation is not None else ''}.")

    def table_rows(self) -> list[dict]:
        """One row per layer and candidate, with whether it was chosen."""
        return [{**dataclasses.asdict(m), "chosen": self.choices.get(m.layer) == m.backend}
                for m in self.measurements]

    @property
    def schedule(self) -> Schedule:
        return Schedule.by_layer(dict(self.choices))

    def to_markdown(self) -> str:
        """One row per layer: the chosen kernel, the automatic one and each candidate's time (ms) and verdict."""
        candidates = list(dict.fromkeys(m.backend for m in self.measurements))
        rows = []
        for layer in dict.fromkeys(m.layer for m in self.measurements):
            chosen = self.choices.get(layer, "automatic")
            alone = (self.confirmation.per_layer_choices.get(layer, "automatic") if self.confirmation is not None
                     else chosen)
            rows.append({"layer": layer, "chosen": f"**{chosen}**" + (f" (alone: {alone})" if alone != chosen else ""),
                         "automatic": self.automatic.get(layer, ""),
                         **{m.backend: f"{format_cell(m.time_ms)} {m.verdict}" for m in self.measurements
                            if m.layer == layer}})
        lines = [self.headline(), "", markdown_table(rows, ["layer", "chosen", "automatic", *candidates]).rstrip()]
        if self.reasons:
            lines += ["", "Never chosen:", ""] + [f"- `{b}`: {why}" for b, why in self.reasons.items()]
        if self.image_verdict is not None:
            lines += ["", f"Image verdict of the whole plan: **{self.image_verdict}** ({self.image_note})"]
        notes = self.notes
        if self.confirmation is not None:  # its decision is written there; not twice
            lines += ["", self.confirmation.to_markdown().rstrip("\n")]
            notes = [n for n in notes if not n.startswith("step-level confirmation: ")]
        return "\n".join(lines + [f"- {note}" for note in notes]) + "\n"

    def __repr__(self):
        chosen = ", ".join(f"{b} x{n}" for b, n in collections.Counter(self.choices.values()).items())
        return (f"AutotuneResult({len(self.choices)} layers: {chosen or 'none chosen'}; never chosen: "
                f"{sorted(self.reasons)})")

    @diffusers_names
    def verify(self, pipe, *, prompt: str, steps: int, seeds=(0,), exact: str | None = None, **pipe_kwargs) -> str:
        """Generate with the plan's schedule and judge the image (``fidelity.image_verdict``); sets and returns
        ``image_verdict`` (``image_note`` says why)."""
        from .fidelity import image_verdict

        self.image_verdict, self.image_note = image_verdict(pipe, self.schedule, prompt=prompt, steps=steps,
                                                            seeds=seeds, exact=exact, **pipe_kwargs)
        return self.image_verdict

    def figure(self, path=None):
        """Per layer, each candidate's time (ms, log) marked by its verdict; the chosen one ringed."""
        layers = list(dict.fromkeys(m.layer for m in self.measurements))
        fig, ax = new_figure(path, figsize=(8, 0.32 * len(layers) + 1.8))
        markers = {"pass": "o", "warn": "s", "fail": "x", "skip": "."}
        for j, name in enumerate(dict.fromkeys(m.backend for m in self.measurements)):
            timed = [m for m in self.measurements if m.backend == name and math.isfinite(m.time_ms)]
            for k, m in enumerate(timed):
                row = layers.index(m.layer)
                ax.scatter(m.time_ms, row, marker=markers.get(m.verdict, "."), color=f"C{j % 10}",
                           label=name if k == 0 else None)
                if self.choices.get(m.layer) == name:
                    ax.scatter(m.time_ms, row, s=160, facecolors="none", edgecolors="black")
        ax.set_xscale("log")
        ax.set_yticks(range(len(layers)), [n.removesuffix(".attn") for n in layers], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("time per call (ms; o pass, s warn, x fail; ringed: chosen)")
        ax.legend(fontsize=7, loc="best")
        return finish_figure(fig, path)

    def as_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "choices": self.choices, "automatic": self.automatic,
                "reasons": self.reasons, "platform": self.platform, "versions": self.versions,
                "settings": self.settings, "image_verdict": self.image_verdict, "image_note": self.image_note,
                "notes": self.notes, "measurements": [json_safe(dataclasses.asdict(m)) for m in self.measurements],
                "confirmation": self.confirmation.as_dict() if self.confirmation is not None else None,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    @classmethod
    def load(cls, path, *, allow_mismatch: bool = False) -> AutotuneResult:
        """A saved plan, checked against its own evidence (``InvalidPlanError``) and, unless ``allow_mismatch``,
        against this machine's platform and versions (``PlanMismatchError``)."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise InvalidPlanError(f"{path} is a folder, not a plan file; pass the plan.json inside it (e.g. "
                                   f"{path / 'plan.json'})")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanNotFoundError(f"no autotune plan at {path}; write one with plan.save(path) or "
                                    "`fluxlab autotune --out DIR`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidPlanError(f"{path} is not a JSON autotune plan ({exc}); write it again with "
                                   "plan.save(path)") from None
        except OSError as exc:
            raise InvalidPlanError(f"cannot read the plan {path}: {exc.strerror or exc}") from None
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise PlanMismatchError(f"{path} is not a {PLAN_FORMAT} plan (format {found!r}); write it "
                                    "again with this fluxlab's plan.save(path)")
        try:
            plan = cls._from_dict(data)
        except FluxlabError:  # an unknown backend or option in a choice: its own message
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"its field {exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)
            raise InvalidPlanError(f"{path} is not a well-formed {PLAN_FORMAT} plan: {what}; write it again with "
                                   "plan.save(path)") from None
        unsupported = _unsupported_choices(plan)
        if unsupported:
            raise InvalidPlanError(
                f"the plan in {path} chooses what its own measurements do not support: {'; '.join(unsupported[:3])}"
                f"{f' and {len(unsupported) - 3} more' if len(unsupported) > 3 else ''}. A plan is applied only as "
                "autotune chose it: run fluxlab.autotune again rather than editing its choices")
        chosen = sorted({BackendChoice.parse(b).name for b in plan.choices.values()})
        saved = [k.removeprefix("backend:") for k in plan.versions if k.startswith("backend:")]
        platform, versions = current_identity(list(dict.fromkeys([*chosen, *saved])))
        keys = tuple(dict.fromkeys([*IDENTITY_VERSIONS, *(f"backend:{n}" for n in chosen), *plan.versions]))
        differences = _differences("platform", plan.platform, platform, PLATFORM_KEYS) + \
            _differences("version", plan.versions, versions, keys)
        if differences and not allow_mismatch:
            raise PlanMismatchError(
                f"the plan in {path} was measured elsewhere: {'; '.join(differences)}. Its timings and verdicts may "
                "not hold here: run fluxlab.autotune again on this machine, or pass allow_mismatch=True to use it "
                "anyway.")
        if differences:
            plan.notes.append("loaded despite: " + "; ".join(differences))
        return plan

    @classmethod
    def _from_dict(cls, data: dict) -> AutotuneResult:
        for key, kind in (("choices", dict), ("measurements", list), ("reasons", dict), ("platform", dict),
                          ("versions", dict), ("settings", dict)):
            if not isinstance(data[key], kind):
                raise TypeError(f"its field {key!r} is a {type(data[key]).__name__}, not a {kind.__name__}")
        measurements = [Measurement(**{k: (math.nan if v is None and k in _FLOAT_FIELDS else v)
                                       for k, v in m.items()}) for m in data["measurements"]]
        choices = dict(data["choices"])
        for backend in choices.values():
            BackendChoice.parse(backend)  # an unknown backend or option raises here, with a suggestion
        plan = cls(choices, measurements, dict(data["reasons"]), data["platform"], data["versions"],
                   data["settings"], dict(data.get("automatic") or {}), data.get("image_verdict"),
                   data.get("image_note", ""), list(data.get("notes") or []))
        if data.get("confirmation"):  # plans saved before the step-level confirmation have none
            plan.confirmation = Confirmation.from_dict(data["confirmation"])
        return plan


def _unsupported_choices(plan: AutotuneResult) -> list[str]:
    """The plan's choices its own evidence does not back: not measured on that layer, not "pass" there, no finite
    time, or quantised/emulated without ``allow_quantised`` and a passing image verdict."""
    found = []
    measured = {(m.layer, m.backend): m for m in plan.measurements}
    allow_quantised = plan.settings.get("allow_quantised") is True
    for layer, backend in plan.choices.items():
        m = measured.get((layer, backend))
        if m is None:
            found.append(f"{backend} on {layer} was never measured there")
        elif m.verdict != "pass":
            found.append(f"{backend} on {layer} was judged {m.verdict}")
        elif not (isinstance(m.time_ms, (int, float)) and math.isfinite(m.time_ms)):
            found.append(f"{backend} on {layer} has no measured time")
        elif approximate(backend) and not allow_quantised:
            found.append(f"{backend} on {layer} is quantised/emulated but the plan was made with "
                         "allow_quantised=False")
        elif approximate(backend) and plan.image_verdict != "pass":
            found.append(f"{backend} on {layer} is quantised/emulated and the plan's image verdict is "
                         f"{plan.image_verdict!r}, not 'pass'")
    return found


_FLOAT_FIELDS = {"time_ms", "rel_l2", "rel_l2_ratio"}
CONFIRMED = ("; then checked on the whole step (below), which may keep another variant: \"alone\" names the "
             "per-layer choice it replaced")
IDENTITY_VERSIONS = ("fluxlab", "torch", "diffusers")  # always compared: a plan without them is "measured elsewhere"
PLATFORM_KEYS = ("vendor", "arch", "device_name", "torch_version", "cuda_version", "hip_version")


def _differences(kind: str, saved: dict, here: dict, keys) -> list[str]:
    return [f"{kind} {key} {saved.get(key)!r} there, {here.get(key)!r} here" for key in keys
            if saved.get(key) != here.get(key)]


def current_identity(backends=()) -> tuple[dict, dict]:
    import diffusers
    import torch

    from ..version import __version__
    from ..platform import current_platform

    versions = {"fluxlab": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
    for name in backends:
        try:
            versions[f"backend:{name}"] = registry.get_backend(name).version
        except UnknownBackendError:
            versions[f"backend:{name}"] = None
    return current_platform().as_dict(), versions


def _names(candidates) -> list[str]:
    names = [candidates] if isinstance(candidates, str) else list(candidates)
    if not names:
        raise DecideInputError("candidates=[] leaves nothing to choose from; pass backend names, e.g. "
                               "candidates=['sdpa', 'flex'] (autotune: or None for every allowed one)")
    return names


def _candidates(state, candidates, allow_quantised: bool) -> tuple[list[str], dict[str, str]]:
    """Candidate names (checked now, before any generation) and reasons for those left out."""
    from ..doctor import backends as statuses

    if candidates is None:
        names = [s.name for s in statuses() if s.available and s.name in state.allowed and s.name != "reference"]
    else:  # unknown / disallowed names and bad options raise here; a candidate is its whole spec, options included
        names = [str(check_allowed(n, state.allowed)) for n in _names(candidates)]
    names = list(dict.fromkeys(names))
    left_out = {name: "quantised or emulated: taken only with allow_quantised=True" for name in names
                if approximate(name) and not allow_quantised}
    chosen = [name for name in names if name not in left_out]
    if not chosen:
        raise DecideInputError(f"no candidate left to time: {left_out}")
    return chosen, left_out


@diffusers_names
def autotune(pipe, *, candidates=None, prompt: str, steps: int, seeds=(0,), allow_quantised: bool = False,
             capture_step: int | None = None, repeats: int = 5, height: int | None = None, width: int | None = None,
             confirm: bool = True, confirm_rounds: int = 5, confirm_uniform: int | None = 3, timer=None,
             progress: bool = False, **pipe_kwargs) -> AutotuneResult:
    """Choose per attention layer the fastest candidate whose verdict on that layer's captured inputs is pass.

    ``candidates``: backend names (None: every allowed one that runs here, less the float64 reference). With
    ``allow_quantised`` quantised/emulated kernels compete too, and the whole plan must then pass the image verdict.
    ``confirm``: then time the real step under the plan's variants and keep the fastest that passes
    (``confirm_plan``; ``timer(variant, run) -> ms`` replaces the wall clock). Every argument: docs/decide.md.
    """
    from ..models.capture import capture

    check_generation_args(prompt, steps)
    seeds = seed_list(seeds)
    check_count(repeats, f"repeats={repeats!r} must be a positive number of timed calls")
    state = state_of(pipe)
    names, reasons = _candidates(state, candidates, allow_quantised)
    step = steps // 2 if capture_step is None else capture_step
    if not -steps <= step < steps:
        raise DecideInputError(f"capture_step={capture_step} is outside the {steps} steps (0..{steps - 1}, or "
                               "negative from the end)")
    if confirm:
        check_count(confirm_rounds, f"confirm_rounds={confirm_rounds!r} must be a positive number of rounds (or "
                    "confirm=False)")
    with capture(pipe, steps=[step]) as cap, record_step(pipe, step, steps) as replay:
        run(pipe, prompt=prompt, seed=seeds[0], steps=steps, height=height, width=width, output="latent",
            **pipe_kwargs)
    settings = {"prompt": prompt, "steps": steps, "seeds": seeds, "capture_step": step, "height": height,
                "width": width, "confirm": confirm, "confirm_rounds": confirm_rounds if confirm else None,
                "confirm_uniform": confirm_uniform if confirm else None,
                **{k: repr(v) for k, v in pipe_kwargs.items()}}
    plan = autotune_records(cap.records, candidates=names, allow_quantised=True, repeats=repeats, progress=progress,
                            settings=settings)
    plan.settings["allow_quantised"] = allow_quantised
    plan.reasons = {**reasons, **plan.reasons}
    if any(approximate(b) for b in plan.choices.values()):
        _image_gate(pipe, plan, prompt=prompt, steps=steps, seeds=seeds, height=height, width=width, **pipe_kwargs)
    if confirm:
        confirm_plan(plan, pipe, replay, rounds=confirm_rounds, uniform=confirm_uniform, timer=timer)
    plan.model = model_of(pipe)
    return plan


def autotune_records(records, *, candidates, allow_quantised: bool = False, repeats: int = 5, progress: bool = False,
                     settings: dict | None = None) -> AutotuneResult:
    """The per-layer choice from captured ``AttentionRecord``s (``fluxlab.capture``; any model): each candidate
    timed and judged on each layer's records, without autotune's image gate."""
    from ..compare.attention import compare_attention

    names = [str(BackendChoice.parse(name)) for name in _names(candidates)]  # unknown names and options raise here
    by_layer: dict[str, list] = {}
    for record in records:
        by_layer.setdefault(record.layer, []).append(record)
    if not by_layer:
        raise DecideInputError("no captured attention calls to tune on: capture a generation first "
                               "(with fluxlab.capture(pipe) as cap: pipe(...))")
    measurements, automatic = [], {}
    with progress_bar(progress, "autotune", unit="layer", total=len(by_layer)) as bar:
        for layer, layer_records in by_layer.items():
            automatic[layer] = layer_records[0].backend
            report = compare_attention(layer_records, backends=names, progress=False, timing_repeats=repeats,
                                       error_maps=False)
            measurements += _measure(layer, report.rows, names)
            bar.update(1)
    choices = _choose(automatic, measurements, allow_quantised=allow_quantised)
    platform, versions = current_identity(sorted({BackendChoice.parse(n).name for n in names}))
    settings = {**(settings or {}), "repeats": repeats, "candidates": names, "allow_quantised": allow_quantised}
    return AutotuneResult(choices, measurements, _never_chosen(measurements, choices), platform, versions, settings,
                          automatic)


def _measure(layer: str, rows, names) -> list[Measurement]:
    """One Measurement per candidate from compare_attention's rows (the layer's inputs: cond and uncond)."""
    from ..compare.tolerances import worst

    found = []
    for name in names:
        mine = [r for r in rows if r.backend == name]
        if not mine:
            continue
        verdict = worst(r.verdict for r in mine)
        times = [r.time_ms for r in mine if r.time_ms is not None and math.isfinite(r.time_ms)]
        found.append(Measurement(
            layer, name, verdict, time_ms=sum(times) / len(times) if times else math.nan,
            rel_l2=max((r.rel_l2 for r in mine if r.rel_l2 is not None), default=math.nan),
            rel_l2_ratio=max((r.rel_l2_ratio for r in mine if r.rel_l2_ratio is not None), default=math.nan),
            quantised=any(r.quantised for r in mine), error=next((r.error for r in mine if r.error), None),
            note=next((r.notes for r in mine if r.verdict == verdict and r.notes), "")))
    return found


def _choose(layers, measurements, *, allow_quantised: bool) -> dict[str, str]:
    """Per layer, the fastest candidate judged pass with a finite time (quantised ones only if allowed)."""
    passing = [m for m in measurements if m.verdict == "pass" and math.isfinite(m.time_ms)
               and (allow_quantised or not approximate(m.backend))]
    return {layer: min((m for m in passing if m.layer == layer), key=lambda m: m.time_ms).backend
            for layer in layers if any(m.layer == layer for m in passing)}


def _never_chosen(measurements, choices) -> dict[str, str]:
    """Why each backend chosen on no layer lost: its first measurement's verdict and error, or its speed."""
    reasons = {}
    for m in measurements:
        if m.backend not in reasons and m.backend not in choices.values():
            reasons[m.backend] = (f"{m.verdict} on {m.layer}: {m.error or m.note}" if m.error or m.verdict != "pass"
                                  else "passes, but slower than the chosen kernel on every layer")
    return reasons


def _image_gate(pipe, plan, **generation) -> None:
    """A plan with quantised layers must pass the image verdict against the automatic choice, else loses them."""
    if plan.verify(pipe, **generation) != "pass":
        dropped = sorted({b for b in plan.choices.values() if approximate(b)})
        plan.choices = _choose(plan.automatic, plan.measurements, allow_quantised=False)
        for name in dropped:
            plan.reasons[name] = f"the plan with it failed the image verdict ({plan.image_verdict}): {plan.image_note}"
        plan.notes.append(f"quantised choices {dropped} dropped: the whole plan did not pass the image verdict; "
                          "exact kernels chosen instead")


__getattr__ = moved(__name__, {"AutotunePlan": "fluxlab.decide:AutotuneResult"})
