"""``fluxlab locate-drift``, ``fluxlab frontier``, ``fluxlab autotune``: Markdown + PNG + JSON into ``--out``.

Every argument is checked before the model loads (a mistake exits with code 2 and one line); a "fail" found by the
work exits with 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..util import json_safe as _json_safe  # NaN and infinities as null: JSON has no NaN
from .runs import DecideInputError, check_generation_args


def add_subcommand(subparsers) -> None:
    from ..command import add_seed_arguments, deprecated_alias, positive

    drift = subparsers.add_parser(
        "locate-drift",
        description="Switch cells of the (attention layer x step) grid from --good to --bad one region at a time, "
                    "coarse to fine, and rank the cells by how far the final latents move. Writes drift.md, "
                    "drift.png and drift.json into --out.")
    _common(drift, "fluxlab-drift")
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

    front = subparsers.add_parser(
        "frontier",
        description="For each candidate: everywhere, exact ends k=1..3, and everywhere except the culprit cells "
                    "locate-drift finds; step time (transformer only, median) and fidelity against --exact. Writes "
                    "frontier.md, frontier.png and frontier.json into --out.")
    _common(front, "fluxlab-frontier")
    front.add_argument("--backends", help="comma-separated fast backends to place, e.g. sage (required)")
    deprecated_alias(front, "--candidates", "--backends", "backends")
    front.add_argument("--exact", default=None, help="the exact reference kernel, one name, not quantised or "
                       "emulated (default: the automatic pick)")
    add_seed_arguments(front, several=True)
    front.add_argument("--repeats", type=positive, default=3, help="timed generations per schedule after a warm-up")
    front.add_argument("--no-locate", action="store_true", help="skip the except-the-culprits schedule")
    front.set_defaults(func=run_frontier)

    tune = subparsers.add_parser(
        "autotune",
        description="Capture q/k/v of a real generation at every attention layer, time and judge each candidate "
                    "there, choose per layer the fastest that passes. Writes plan.md, plan.png and plan.json "
                    "(load it with fluxlab.AutotuneResult.load) into --out.")
    _common(tune, "fluxlab-autotune")
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


def _common(parser, out: str) -> None:
    from ..command import DEFAULT_MODEL, DEFAULT_PROMPT, MODEL_HELP
    from ..models.cli import DTYPES, add_offload_argument

    parser.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="what to draw")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (at least 2)")
    parser.add_argument("--size", default=None, help="N or WIDTHxHEIGHT, multiples of 16 (8 for the embedded "
                        "model) (default: the model's own)")
    parser.add_argument("--max-sequence-length", type=int, default=None, help="text tokens (default: the "
                        "pipeline's 512; fewer is faster on a CPU)")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: where the model loads)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, metavar="DTYPE",
                        help="bf16, fp16 or fp32 (or bfloat16, float16, float32) (default: as the model was saved)")
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out although it holds files fluxlab did not write")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none anyway when stderr is not a terminal or a notebook)")
    add_offload_argument(parser)


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
    from ..models.cli import check_device, check_model_source, check_offload_option
    from ..models.generate import parse_size
    from ..models.limits import size_multiple_for
    from ..outputs import check_output_folder

    check_generation_args(args.prompt, args.steps)
    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise DecideInputError(f"--max-sequence-length {args.max_sequence_length} must be a positive number of "
                               "text tokens")
    check_model_source(args.model)
    check_device(args.device)
    check_offload_option(args.offload, args.device)
    check_output_folder(args.out, overwrite=args.overwrite)
    return (None, None) if args.size is None else parse_size(args.size, size_multiple_for(args.model))


def _check_steps(text: str | None, steps: int, option: str) -> list[int] | None:
    """Step indices inside the generation (0..steps-1, or negative from the end); one outside would never run."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DecideInputError(f"{option} {text!r} must be comma-separated integers, e.g. {option} 0,1") from None
    if not values:
        raise DecideInputError(f"{option} is empty; e.g. {option} 0")
    outside = [v for v in values if not -steps <= v < steps]
    if outside:
        raise DecideInputError(f"{option} {text}: {outside} outside the {steps} steps (0..{steps - 1}, or -1 for the "
                               "last); --bad would never run there, so there would be no drift to locate")
    return values


def _check_exact(name: str | None) -> None:
    """--exact is the yardstick every schedule is judged against: a quantised or emulated kernel cannot be it."""
    from .confirm import approximate

    if name is not None and approximate(name):
        raise DecideInputError(f"--exact {name} is quantised or emulated, not exact: the frontier judges every "
                               "schedule against --exact; pass an exact kernel such as sdpa, sdpa_math or flex (or "
                               "leave it out for the automatic pick)")


def _check_candidates(names: list[str] | None, allow_quantised: bool) -> None:
    """Candidates that autotune would leave out all the same, refused before the model loads."""
    from .confirm import approximate

    if names and not allow_quantised and all(approximate(n) for n in names):
        raise DecideInputError(f"--backends {','.join(names)}: all quantised or emulated, and those take part only "
                               "with --allow-quantised; add it, or name an exact kernel too")


def _load(args, names):
    from ..models.cli import OFFLOAD_CHOICES
    from ..models.load import load_flux2
    from ..models import FLUX2_BACKENDS
    from ..util import parse_dtype

    dtype = parse_dtype(args.dtype) if args.dtype else None
    allowed = set(FLUX2_BACKENDS) | {n.split(":")[0] for n in names}
    start = time.perf_counter()
    pipe = load_flux2(args.model, device=args.device, dtype=dtype, allowed=allowed,
                      offload=OFFLOAD_CHOICES[args.offload])
    print(f"{type(pipe).__name__} from {args.model!r} loaded in {time.perf_counter() - start:.1f} s", flush=True)
    return pipe


def _pipe_kwargs(args) -> dict:
    return {} if args.max_sequence_length is None else {"max_sequence_length": args.max_sequence_length}


def _work_and_write(args, verb: str, stem: str, work):
    """Run ``work``; where it succeeds, write its result (Markdown, PNG, and JSON with provenance as
    ``result.save`` writes it) into --out through fluxlab.outputs and print its table. A failure of the kernels (not
    of the command line) is one line on stderr: the result is then None (exit code 1)."""
    from ..command import one_line
    from ..errors import FluxlabError
    from ..outputs import output_folder
    from .files import write_atomic, write_figure, write_json

    try:
        result = work()
    except FluxlabError as exc:
        print(f"fluxlab {verb}: failed: {one_line(exc)}", file=sys.stderr)
        return None
    markdown = result.to_markdown()
    with output_folder(args.out, verb=verb, overwrite=args.overwrite) as out:
        write_json(out / f"{stem}.json", _json_safe(result.to_json_dict()))
        write_figure(out / f"{stem}.png", result.figure())
        write_atomic(out / f"{stem}.md", markdown + f"\n![{stem}]({stem}.png)\n")
    print(f"wrote {Path(args.out) / stem}.md, .png, .json")
    print(markdown)
    return result


# -- the verbs -----------------------------------------------------------------------------------------------------


def run_locate_drift(args) -> int:
    from ..models.schedule import Rule, Schedule
    from .drift import locate_drift

    width, height = _check(args)
    good, bad = _one_name(args.good, "--good"), _one_name(args.bad, "--bad")
    if good == bad and args.bad_layers is None and args.bad_steps is None:
        raise DecideInputError(f"--good and --bad are both {good}: the same kernel gives no drift to locate; pass "
                               "the kernel under suspicion as --bad")
    layers = [p.strip() for p in args.bad_layers.split(",")] if args.bad_layers else None
    steps = _check_steps(args.bad_steps, args.steps, "--bad-steps")
    if args.budget is not None and args.budget < 2:
        raise DecideInputError(f"--budget {args.budget}: locating drift needs at least 2 generations (all good and "
                               "all bad); leave it out for the search's own bound")
    pipe = _load(args, [good, bad])
    bad_plan = bad if layers is None and steps is None else Schedule(
        default=good, rules=[Rule(bad, layers=tuple(layers or ("*",)), steps=steps)])
    drift = _work_and_write(args, "locate-drift", "drift", lambda: locate_drift(
        pipe, good, bad_plan, prompt=args.prompt, seed=args.seed, steps=args.steps, height=height, width=width,
        beam=args.beam, budget=args.budget, progress=not args.no_progress, **_pipe_kwargs(args)))
    return 1 if drift is None else 0


def run_frontier(args) -> int:
    from .frontier import frontier

    width, height = _check(args)
    if args.backends is None:  # not argparse's required=: its old spelling --candidates must count too
        raise DecideInputError("frontier needs --backends, the fast kernels to place, e.g. --backends sage")
    candidates = _names(args.backends, "--backends")
    exact = _one_name(args.exact, "--exact") if args.exact else None
    _check_exact(exact)
    pipe = _load(args, candidates + ([exact] if exact else []))
    result = _work_and_write(args, "frontier", "frontier", lambda: frontier(
        pipe, candidates, prompt=args.prompt, seeds=args.seeds, steps=args.steps, exact=exact, height=height,
        width=width, repeats=args.repeats, locate=not args.no_locate, progress=not args.no_progress,
        **_pipe_kwargs(args)))
    return 1 if result is None else 0


def run_autotune(args) -> int:
    from .autotune import autotune

    width, height = _check(args)
    candidates = _names(args.backends, "--backends") or None
    _check_candidates(candidates, args.allow_quantised)
    if args.confirm_rounds < 0:
        raise DecideInputError(f"--confirm-rounds {args.confirm_rounds} must be 0 (no step-level check) or more")
    pipe = _load(args, candidates or [])
    plan = _work_and_write(args, "autotune", "plan", lambda: autotune(
        pipe, candidates=candidates, prompt=args.prompt, steps=args.steps, seeds=args.seeds,
        allow_quantised=args.allow_quantised, repeats=args.repeats, height=height, width=width,
        confirm=args.confirm_rounds > 0, confirm_rounds=max(args.confirm_rounds, 1), progress=not args.no_progress,
        **_pipe_kwargs(args)))
    if plan is None:
        return 1
    if not plan.choices:
        print("fluxlab autotune: no candidate passed on any layer; the automatic choice stays", file=sys.stderr)
        return 1
    return 0
