"""``fluxlab locate-drift``, ``fluxlab frontier``, ``fluxlab autotune``: Markdown + PNG + JSON into ``--out``.
Every argument is checked before the model loads (exit code 2 and one line); a "fail" of the work exits with 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..util import json_safe as _json_safe  # NaN and infinities as null: JSON has no NaN
from .runs import DecideInputError, check_generation_args


def add_subcommand(subparsers) -> None:
    from ..command import add_seed_arguments, deprecated_alias, positive

    drift = _parser(subparsers, "locate-drift", "fluxlab-drift",
                    "Switch cells of the (attention layer x step) grid from --good to --bad one region at a time, "
                    "coarse to fine, and rank the cells by how far the final latents move. Writes drift.md, "
                    "drift.png and drift.json into --out.")
    drift.add_argument("--good", default="sdpa", help="the trusted backend (one name)")
    drift.add_argument("--bad", required=True, help="the backend whose drift is located (one name)")
    drift.add_argument("--bad-layers", default=None, help="put --bad only in these layers (glob patterns, comma-"
                       "separated), --good elsewhere: a schedule as the bad side")
    drift.add_argument("--bad-steps", default=None, help="put --bad only at these steps, 0-based, e.g. 1,2 (-1: the "
                       "last)")
    add_seed_arguments(drift, several=False)
    drift.add_argument("--beam", type=positive, default=2, help="regions split further per level")
    drift.add_argument("--budget", type=int, default=None, help="most generations, at least 2 (default: the "
                       "search's bound)")
    drift.set_defaults(func=run_locate_drift)

    front = _parser(subparsers, "frontier", "fluxlab-frontier",
                    "For each candidate: everywhere, exact ends k=1..3, and everywhere except the culprit cells "
                    "locate-drift finds; step time (transformer only, median) and fidelity against --exact. Writes "
                    "frontier.md, frontier.png and frontier.json into --out.")
    front.add_argument("--backends", help="comma-separated fast backends to place, e.g. sage (required)")
    deprecated_alias(front, "--candidates", "--backends", "backends")
    front.add_argument("--exact", default=None, help="the exact reference kernel, one name, not quantised or "
                       "emulated (default: the automatic pick)")
    add_seed_arguments(front, several=True)
    front.add_argument("--repeats", type=positive, default=3, help="timed generations per schedule after a warm-up")
    front.add_argument("--no-locate", action="store_true", help="skip the except-the-culprits schedule")
    front.set_defaults(func=run_frontier)

    tune = _parser(subparsers, "autotune", "fluxlab-autotune",
                   "Capture q/k/v of a real generation at every attention layer, time and judge each candidate "
                   "there, choose per layer the fastest that passes. Writes plan.md, plan.png and plan.json "
                   "(load it with fluxlab.AutotuneResult.load) into --out.")
    tune.add_argument("--backends", default=None, help="comma-separated candidate backends (default: every allowed "
                      "one that runs here, less the float64 reference)")
    deprecated_alias(tune, "--candidates", "--backends", "backends")
    add_seed_arguments(tune, several=True, help_text="comma-separated seeds of the image verdict of quantised plans "
                       "(whole numbers from 0 to 2**63 - 1)")
    tune.add_argument("--repeats", type=positive, default=5, help="timed calls per captured input after a warm-up")
    tune.add_argument("--confirm-rounds", type=int, default=5,
                      help="rounds of the step-level check (the per-layer plan against the automatic pick and uniform "
                           "candidates on the real step; the fastest that passes everywhere is kept); 0 skips it")
    tune.add_argument("--allow-quantised", action="store_true",
                      help="let quantised/emulated kernels compete; the whole plan must then pass the image verdict")
    tune.set_defaults(func=run_autotune)


def _parser(subparsers, verb: str, out: str, description: str):
    """The verb's parser with the options all three share."""
    from ..command import add_options

    parser = subparsers.add_parser(verb, description=description)
    add_options(parser, "--model", "--prompt", "--steps", steps={"help": "denoising steps (at least 2)"})
    parser.add_argument("--size", default=None, help="N or WIDTHxHEIGHT, multiples of 16 (8 for the embedded "
                        "model) (default: the model's own)")
    parser.add_argument("--max-sequence-length", type=int, default=None, help="text tokens (default: the "
                        "pipeline's 512; fewer is faster on a CPU)")
    add_options(parser, "--device", "--dtype", "--out", "--overwrite", "--no-progress", "--offload", out=out)
    return parser


# -- checks before the model loads ---------------------------------------------------------------------------------


def _names(text: str | None, option: str) -> list[str]:
    from ..command import check_distinct, split_list
    from ..dispatch import BackendChoice

    if text is None:
        return []
    names = split_list(text)
    if not names:
        raise DecideInputError(f"{option} is empty; pass backend names, e.g. {option} sdpa,flex")
    resolved = [str(BackendChoice.parse(n)) for n in names]  # unknown names raise with a suggestion
    check_distinct(option, names, resolved)
    return resolved


def _one_name(text: str, option: str) -> str:
    """A role that one backend plays (--good, --bad, --exact): a list there is refused, not cut to its first."""
    names = _names(text, option)
    if len(names) != 1:
        raise DecideInputError(f"{option} takes one backend, got {len(names)} ({text}); run once per backend, or "
                               "use frontier to compare several")
    return names[0]


def _check(args) -> tuple[int | None, int | None]:
    """What every verb takes, checked before the model loads; returns --size as (width, height), checked against the
    model's own multiple as ``fluxlab generate`` checks it (a size it would silently shrink is refused)."""
    from ..models.cli import check_model_options
    from ..models.generate import parse_size
    from ..models.limits import size_multiple_for
    from ..outputs import check_output_folder

    check_generation_args(args.prompt, args.steps)
    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise DecideInputError(f"--max-sequence-length {args.max_sequence_length} must be a positive number of "
                               "text tokens")
    args.offload_value = check_model_options(args)
    check_output_folder(args.out, overwrite=args.overwrite)
    return (None, None) if args.size is None else parse_size(args.size, size_multiple_for(args.model))


def _bad_steps(text: str | None, steps: int) -> list[int] | None:
    """--bad-steps: indices inside the generation (0..steps-1, or negative from the end); one outside never runs."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DecideInputError(f"--bad-steps {text!r} must be comma-separated integers, e.g. --bad-steps 0,1") from None
    if not values:
        raise DecideInputError("--bad-steps is empty; e.g. --bad-steps 0")
    if outside := [v for v in values if not -steps <= v < steps]:
        raise DecideInputError(f"--bad-steps {text}: {outside} outside the {steps} steps (0..{steps - 1}, or -1 for "
                               "the last); --bad would never run there, so there would be no drift to locate")
    return values


def _load(args, names):
    from ..models.load import load_flux2
    from ..models import FLUX2_BACKENDS
    from ..util import parse_dtype

    start = time.perf_counter()
    pipe = load_flux2(args.model, device=args.device, dtype=parse_dtype(args.dtype) if args.dtype else None,
                      allowed=set(FLUX2_BACKENDS) | {n.split(":")[0] for n in names}, offload=args.offload_value)
    print(f"{type(pipe).__name__} from {args.model!r} loaded in {time.perf_counter() - start:.1f} s", flush=True)
    return pipe


def _run_and_write(args, verb: str, stem: str, work, *positional, size, **kwargs) -> int:
    """``work(*positional, **kwargs)`` with the options all three verbs share; where it succeeds, its result goes
    into --out (Markdown, PNG, and JSON with provenance as ``result.save`` writes it) and its table is printed. A
    failure of the kernels (not of the command line) is one line on stderr and exit code 1."""
    from ..command import failed
    from ..errors import FluxlabError
    from ..outputs import output_folder
    from .files import write_atomic, write_figure, write_json

    if args.max_sequence_length is not None:
        kwargs["max_sequence_length"] = args.max_sequence_length
    try:
        result = work(*positional, prompt=args.prompt, steps=args.steps, width=size[0], height=size[1],
                      progress=not args.no_progress, **kwargs)
    except FluxlabError as exc:
        return failed(verb, exc)
    markdown = result.to_markdown()
    with output_folder(args.out, verb=verb, overwrite=args.overwrite) as out:
        write_json(out / f"{stem}.json", _json_safe(result.to_json_dict()))
        write_figure(out / f"{stem}.png", result.figure())
        write_atomic(out / f"{stem}.md", markdown + f"\n![{stem}]({stem}.png)\n")
    print(f"wrote {Path(args.out) / stem}.md, .png, .json")
    print(markdown)
    if verb == "autotune" and not result.choices:
        print("fluxlab autotune: no candidate passed on any layer; the automatic choice stays", file=sys.stderr)
        return 1
    return 0


# -- the verbs -----------------------------------------------------------------------------------------------------


def run_locate_drift(args) -> int:
    from ..models.schedule import Rule, Schedule
    from .drift import locate_drift

    size = _check(args)
    good, bad = _one_name(args.good, "--good"), _one_name(args.bad, "--bad")
    if good == bad and args.bad_layers is None and args.bad_steps is None:
        raise DecideInputError(f"--good and --bad are both {good}: the same kernel gives no drift to locate; pass "
                               "the kernel under suspicion as --bad")
    layers = [p.strip() for p in args.bad_layers.split(",")] if args.bad_layers else None
    steps = _bad_steps(args.bad_steps, args.steps)
    if args.budget is not None and args.budget < 2:
        raise DecideInputError(f"--budget {args.budget}: locating drift needs at least 2 generations (all good and "
                               "all bad); leave it out for the search's own bound")
    pipe = _load(args, [good, bad])
    bad_plan = bad if layers is None and steps is None else Schedule(
        default=good, rules=[Rule(bad, layers=tuple(layers or ("*",)), steps=steps)])
    return _run_and_write(args, "locate-drift", "drift", locate_drift, pipe, good, bad_plan, size=size,
                          seed=args.seed, beam=args.beam, budget=args.budget)


def run_frontier(args) -> int:
    from .confirm import approximate
    from .frontier import frontier

    size = _check(args)
    if args.backends is None:  # not argparse's required=: its old spelling --candidates must count too
        raise DecideInputError("frontier needs --backends, the fast kernels to place, e.g. --backends sage")
    candidates = _names(args.backends, "--backends")
    exact = _one_name(args.exact, "--exact") if args.exact else None
    if exact is not None and approximate(exact):  # --exact is the yardstick every schedule is judged against
        raise DecideInputError(f"--exact {exact} is quantised or emulated, not exact: the frontier judges every "
                               "schedule against --exact; pass an exact kernel such as sdpa, sdpa_math or flex (or "
                               "leave it out for the automatic pick)")
    pipe = _load(args, candidates + ([exact] if exact else []))
    return _run_and_write(args, "frontier", "frontier", frontier, pipe, candidates, size=size, seeds=args.seeds,
                          exact=exact, repeats=args.repeats, locate=not args.no_locate)


def run_autotune(args) -> int:
    from .autotune import autotune
    from .confirm import approximate

    size = _check(args)
    candidates = _names(args.backends, "--backends") or None
    if candidates and not args.allow_quantised and all(approximate(n) for n in candidates):
        raise DecideInputError(f"--backends {','.join(candidates)}: all quantised or emulated, and those take part "
                               "only with --allow-quantised; add it, or name an exact kernel too")
    if args.confirm_rounds < 0:
        raise DecideInputError(f"--confirm-rounds {args.confirm_rounds} must be 0 (no step-level check) or more")
    pipe = _load(args, candidates or [])
    return _run_and_write(args, "autotune", "plan", autotune, pipe, size=size, candidates=candidates,
                          seeds=args.seeds, allow_quantised=args.allow_quantised, repeats=args.repeats,
                          confirm=args.confirm_rounds > 0, confirm_rounds=max(args.confirm_rounds, 1))
