"""``fluxlab locate-drift``, ``fluxlab frontier``, ``fluxlab autotune``: Markdown + PNG + JSON into ``--out``.

Every argument is checked before the model loads (a mistake exits with code 2 and one line); a "fail" found by the
work exits with 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .runs import DecideInputError, check_generation_args


def _work(verb: str, fn):
    """Run the work: a failure of the kernels (not of the command line) is one line on stderr and exit code 1."""
    from ..errors import FluxlabError

    try:
        return fn()
    except FluxlabError as exc:
        print(f"fluxlab {verb}: failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return None


def add_subcommand(subparsers) -> None:
    drift = subparsers.add_parser(
        "locate-drift", help="which attention layers x denoising steps make a kernel's image drift",
        description="Switch cells of the (attention layer x step) grid from --good to --bad one region at a time, "
                    "coarse to fine, and rank the cells by how far the final latents move. Writes drift.md, "
                    "drift.png and drift.json into --out.")
    _common(drift, "fluxlab-drift")
    drift.add_argument("--good", default="sdpa", help="the trusted backend")
    drift.add_argument("--bad", required=True, help="the backend whose drift is located")
    drift.add_argument("--bad-layers", default=None, help="put --bad only in these layers (glob patterns, comma-"
                       "separated), --good elsewhere: a schedule as the bad side")
    drift.add_argument("--bad-steps", default=None, help="put --bad only at these steps, e.g. 1,2 (-1: the last)")
    drift.add_argument("--seed", type=int, default=0)
    drift.add_argument("--beam", type=int, default=2, help="regions split further per level")
    drift.add_argument("--budget", type=int, default=None, help="most generations (default: the search's bound)")
    drift.set_defaults(func=run_locate_drift)

    front = subparsers.add_parser(
        "frontier", help="step time vs image fidelity of a fast kernel's schedules, Pareto set marked",
        description="For each candidate: everywhere, exact ends k=1..3, and everywhere except the culprit cells "
                    "locate-drift finds; step time (transformer only, median) and fidelity against --exact. Writes "
                    "frontier.md, frontier.png and frontier.json into --out.")
    _common(front, "fluxlab-frontier")
    front.add_argument("--candidates", required=True, help="comma-separated fast backends, e.g. sage")
    front.add_argument("--exact", default=None, help="the exact reference kernel (default: the automatic pick)")
    front.add_argument("--seeds", default="0", help="comma-separated seeds")
    front.add_argument("--repeats", type=int, default=3, help="timed generations per schedule after a warm-up")
    front.add_argument("--no-locate", action="store_true", help="skip the except-the-culprits schedule")
    front.set_defaults(func=run_frontier)

    tune = subparsers.add_parser(
        "autotune", help="per attention layer, the fastest kernel whose verdict on the layer's real inputs is pass",
        description="Capture q/k/v of a real generation at every attention layer, time and judge each candidate "
                    "there, choose per layer the fastest that passes. Writes plan.md, plan.png and plan.json "
                    "(load it with fluxlab.AutotunePlan.load) into --out.")
    _common(tune, "fluxlab-autotune")
    tune.add_argument("--candidates", default=None, help="comma-separated backends (default: every allowed one "
                      "that runs here, less the float64 reference)")
    tune.add_argument("--seeds", default="0", help="comma-separated seeds (the image verdict of quantised plans)")
    tune.add_argument("--repeats", type=int, default=5, help="timed calls per captured input after a warm-up")
    tune.add_argument("--confirm-rounds", type=int, default=5,
                      help="rounds of the step-level check (the per-layer plan against the automatic pick and uniform "
                           "candidates on the real step; the fastest that passes everywhere is kept); 0 skips it")
    tune.add_argument("--allow-quantised", action="store_true",
                      help="let quantised/emulated kernels compete; the whole plan must then pass the image verdict")
    tune.set_defaults(func=run_autotune)


def _common(parser, out: str) -> None:
    from ..models.cli import add_offload_argument

    parser.add_argument("--model", default="embedded", help="'embedded', 'tiny', a local pipeline folder or a Hub id")
    parser.add_argument("--prompt", default="a red circle at the top left on a blue background")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default=None, help="N or WIDTHxHEIGHT (default: the model's own)")
    parser.add_argument("--max-sequence-length", type=int, default=None, help="text tokens (default: the "
                        "pipeline's 512; fewer is faster on a CPU)")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: where the model loads)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None)
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out although it holds files fluxlab did not write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_offload_argument(parser)


# -- checks before the model loads ---------------------------------------------------------------------------------


def _names(text: str | None, option: str) -> list[str]:
    from ..dispatch import BackendChoice

    if text is None:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DecideInputError(f"{option} is empty; pass backend names, e.g. {option} sdpa,flex")
    return [str(BackendChoice.parse(n)) for n in names]  # unknown names raise with a suggestion


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DecideInputError(f"{option} {text!r} must be comma-separated integers, e.g. {option} 0,1") from None
    if not values:
        raise DecideInputError(f"{option} is empty; e.g. {option} 0")
    return values


def _size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    parts = text.lower().split("x")
    try:
        width, height = int(parts[0]), int(parts[-1])
        if len(parts) > 2 or width <= 0 or height <= 0 or width % 8 or height % 8:
            raise ValueError
    except ValueError:
        raise DecideInputError(f"--size {text!r} must be N or WIDTHxHEIGHT, positive multiples of 8 (16 for "
                               "FLUX.2 [dev]-size models), e.g. 64 or 1024x1024") from None
    return width, height


def _check(args) -> None:
    from ..models.cli import check_model_source, check_offload_option

    check_generation_args(args.prompt, args.steps)
    if args.max_sequence_length is not None and args.max_sequence_length < 1:
        raise DecideInputError(f"--max-sequence-length {args.max_sequence_length} must be a positive number of "
                               "text tokens")
    from ..outputs import check_output_folder

    check_model_source(args.model)
    check_offload_option(args.offload, args.device)
    check_output_folder(args.out, overwrite=args.overwrite)


def _load(args, names):
    from ..models.cli import OFFLOAD_CHOICES
    from ..models.load import load_flux2
    from ..models.supported import FLUX2_BACKENDS
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


def _write(args, verb: str, stem: str, markdown: str, figure, payload: dict) -> None:
    """Into --out through fluxlab.outputs (an earlier run's own files replaced, nobody else's), atomically."""
    from ..outputs import output_folder
    from .files import write_atomic, write_figure, write_json

    with output_folder(args.out, verb=verb, overwrite=args.overwrite) as out:
        write_json(out / f"{stem}.json", payload)
        write_figure(out / f"{stem}.png", figure)
        write_atomic(out / f"{stem}.md", markdown + f"\n![{stem}]({stem}.png)\n")
    print(f"wrote {Path(args.out) / stem}.md, .png, .json")


def _work_and_write(args, verb: str, stem: str, fn):
    """``_work`` then, where it succeeded, ``_write`` its result and print its table; the result, or None."""
    result = _work(verb, fn)
    if result is not None:
        # the result and its provenance (platform, versions, model, command), as result.save(path) writes it
        _write(args, verb, stem, result.to_markdown(), result.figure(), result.to_json_dict())
        print(result.to_markdown())
    return result


def _check_repeats(args) -> None:
    if args.repeats < 1:
        raise DecideInputError(f"--repeats {args.repeats} must be at least 1")


# -- the verbs -----------------------------------------------------------------------------------------------------


def run_locate_drift(args) -> int:
    from ..models.schedule import Rule, Schedule
    from .drift import locate_drift

    _check(args)
    good, bad = _names(args.good, "--good")[0], _names(args.bad, "--bad")[0]
    layers = [p.strip() for p in args.bad_layers.split(",")] if args.bad_layers else None
    steps = _ints(args.bad_steps, "--bad-steps") if args.bad_steps else None
    width, height = _size(args.size)
    pipe = _load(args, [good, bad])
    bad_plan = bad if layers is None and steps is None else Schedule(
        default=good, rules=[Rule(bad, layers=tuple(layers or ("*",)), steps=steps)])
    drift = _work_and_write(args, "locate-drift", "drift", lambda: locate_drift(
        pipe, good, bad_plan, prompt=args.prompt, seed=args.seed, steps=args.steps, height=height, width=width,
        beam=args.beam, budget=args.budget, progress=not args.no_progress, **_pipe_kwargs(args)))
    return 1 if drift is None else 0


def run_frontier(args) -> int:
    from .frontier import frontier

    _check(args)
    candidates = _names(args.candidates, "--candidates")
    exact = _names(args.exact, "--exact")[0] if args.exact else None
    seeds = _ints(args.seeds, "--seeds")
    width, height = _size(args.size)
    _check_repeats(args)
    pipe = _load(args, candidates + ([exact] if exact else []))
    result = _work_and_write(args, "frontier", "frontier", lambda: frontier(
        pipe, candidates, prompt=args.prompt, seeds=seeds, steps=args.steps, exact=exact, height=height, width=width,
        repeats=args.repeats, locate=not args.no_locate, progress=not args.no_progress, **_pipe_kwargs(args)))
    return 1 if result is None else 0


def run_autotune(args) -> int:
    from .autotune import autotune

    _check(args)
    candidates = _names(args.candidates, "--candidates") or None
    seeds = _ints(args.seeds, "--seeds")
    width, height = _size(args.size)
    _check_repeats(args)
    if args.confirm_rounds < 0:
        raise DecideInputError(f"--confirm-rounds {args.confirm_rounds} must be 0 (no step-level check) or more")
    pipe = _load(args, candidates or [])
    plan = _work_and_write(args, "autotune", "plan", lambda: autotune(
        pipe, candidates=candidates, prompt=args.prompt, steps=args.steps, seeds=seeds,
        allow_quantised=args.allow_quantised, repeats=args.repeats, height=height, width=width,
        confirm=args.confirm_rounds > 0, confirm_rounds=max(args.confirm_rounds, 1), progress=not args.no_progress,
        **_pipe_kwargs(args)))
    if plan is None:
        return 1
    if not plan.choices:
        print("fluxlab autotune: no candidate passed on any layer; the automatic choice stays", file=sys.stderr)
        return 1
    return 0
