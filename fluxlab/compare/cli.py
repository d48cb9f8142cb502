"""``fluxlab compare``: run the equivalence sweep and write a report; exit code 1 if any backend fails."""

from __future__ import annotations

import shlex
import sys

from ..command import EXIT_TEXT, split_list as _csv


def add_subcommand(subparsers) -> None:
    from ..command import MODEL_HELP, add_options, add_seed_arguments
    from .specs import KNOBS

    parser = subparsers.add_parser(
        "compare",
        description="Judge every attention backend against float64, with torch's own error in the same dtype as "
                    "the yardstick; then attention captured from a FLUX.2 model and its images from identical "
                    "noise (--model none skips those).",
        epilog="Backend specs take options and torch knobs: 'aiter:how_v3_bf16_cvt=0', " + ", ".join(
            f"'sdpa:{k}=0' ({v.description})" for k, v in KNOBS.items()) + ". " + EXIT_TEXT)
    add_options(parser, "--out", "--overwrite", out={"default": "fluxlab-compare",
                                                     "help": "folder for report.md/.html and PNGs"})
    parser.add_argument("--format", choices=("md", "html"), default="md", help="report format")
    parser.add_argument("--backends", help="comma-separated backend specs (default: every backend that runs here; "
                        "on a CPU that includes the emulated kernels emu_*, labelled in the report)")
    parser.add_argument("--inputs", choices=("default", "cpu", "flux", "smoke", "none"), default=None,
                        help="synthetic set: sized for this machine (default; none when --records is given), the CPU "
                             "set (S 512-1024), the FLUX.2 shapes (S 4608/16896), a seconds-long smoke set (S 192), "
                             "or none")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated dtypes for synthetic inputs "
                        "(bf16, fp16, fp32)")
    add_seed_arguments(parser, several=True, alias=False, help_text="comma-separated seeds of the synthetic inputs "
                       "(whole numbers from 0 to 2**63 - 1)")
    add_options(parser, "--model", "--variant", "--steps", "--prompt",
                model={"help": f"model to capture attention from and generate images with: {MODEL_HELP}; or 'none' "
                               "to skip"},
                variant={"help": "for --model tiny (default dev); a saved or embedded model knows its own"},
                steps={"help": "denoising steps of the image comparison"},
                prompt={"help": "prompt of the image comparison"})
    add_seed_arguments(parser, several=False, alias=False, help_text="seed of the image generation (whole numbers "
                       "from 0 to 2**63 - 1)")
    parser.add_argument("--no-images", action="store_true", help="skip the image comparison")
    parser.add_argument("--records", action="append", default=[], metavar="DIR",
                        help="replay records saved elsewhere (repeatable)")
    parser.add_argument("--save-captures", action="store_true", help="save the captured records under OUT/records")
    add_options(parser, "--device", "--offload", "--no-progress",
                device={"help": "where to compare (default: cuda if available, else cpu)"})
    parser.add_argument("--invariance", action="store_true",
                        help="instead of the sweep: per backend, are reruns bitwise identical, is a sample the same "
                             "alone and inside a batch of 4, and at any position in the batch: for the attention "
                             "call (per --dtypes) and for whole generations of --model (4 prompts, seeds --seed to "
                             "--seed + 3, --steps; --model none or --no-images skips those)")
    parser.add_argument("--parallel", action="append", default=[], metavar="MODE",
                        help="instead of the sweep: the same transformer step on N ranks vs 1 rank per backend, e.g. "
                             "--parallel ulysses=2 --parallel ring=2 (repeatable; see `fluxlab parallel`)")
    parser.set_defaults(func=_run)


def _check(args) -> None:
    """Every command-line mistake, found before any model loads or kernel runs (main() exits 2 with it)."""
    from pathlib import Path

    from ..command import UsageError, check_distinct
    from ..models.cli import check_device, check_model_options
    from ..models.limits import steps_problem
    from ..outputs import check_output_folder
    from ..parallel.cli import parallel_modes
    from ..platform import current_platform
    from .attention import parse_dtype
    from .records import MANIFEST_FILE
    from .specs import BackendSpec, _split_specs, parse_backends

    if args.inputs is None:  # replaying records is the whole point of --records: no synthetic sweep unless asked
        args.inputs = "none" if args.records else "default"
    dtypes = _csv(args.dtypes)
    check_distinct("--dtypes", dtypes, [str(parse_dtype(d)) for d in dtypes or [""]])
    if problem := steps_problem(args.steps):
        raise UsageError(problem)
    if args.backends is not None:
        if not parse_backends(args.backends, current_platform()):
            raise UsageError("--backends is empty; give comma-separated backend specs, e.g. sdpa,sdpa_math")
        typed = _split_specs(args.backends)
        check_distinct("--backends", typed, [BackendSpec.parse(t).label for t in typed])
    if not args.parallel and args.inputs == "none" and args.model == "none" and not args.records:
        raise UsageError("--inputs none with --model none and no --records compares nothing; drop one of them, or "
                         "pass --records DIR")
    args.offload_value = check_model_options(args) if args.model != "none" else check_device(args.device)
    for folder in args.records:
        if not (Path(folder) / MANIFEST_FILE).is_file():
            raise UsageError(f"--records {folder}: no {MANIFEST_FILE} there, so it holds no records; pass the folder "
                             "fluxlab.compare.save_records (or --save-captures) wrote")
    if args.invariance and args.model != "none" and not args.no_images and args.seed > 2**63 - 4:
        raise UsageError(f"--seed {args.seed}: --invariance generates with seeds --seed to --seed + 3, which must stay "
                         "at most 2**63 - 1; pass a smaller --seed")
    parallel_modes(args.parallel, "--parallel")
    check_output_folder(args.out, overwrite=args.overwrite)


def _run(args) -> int:
    from ..command import failed
    from ..errors import FluxlabError
    from ..outputs import output_folder

    _check(args)  # every mistake of the command line: exit code 2 (main prints it)
    work = _run_parallel if args.parallel else _run_invariance if args.invariance else _sweep
    try:
        with output_folder(args.out, verb="compare", overwrite=args.overwrite) as out:
            return work(args, out)
    except FluxlabError as exc:  # the work failed, not the command line
        return failed("compare", exc)


def _run_parallel(args, out) -> int:
    from ..parallel import ParallelRefusedError, compare_parallel
    from ..util import atomic_write

    try:
        result = compare_parallel(args.parallel, _csv(args.backends) if args.backends else ["sdpa"], seed=args.seed)
    except ParallelRefusedError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    atomic_write(out / "parallel.md", result.markdown() + "\n")
    print(result.markdown())
    print(f"report: {out / 'parallel.md'}")
    if not result.passed:
        print("some parallel run FAILED (exit code 1)")
    return 0 if result.passed else 1


def _run_invariance(args, out) -> int:
    import json

    from ..util import atomic_write, provenance
    from .invariance import check_invariance

    sections, data = [], {"provenance": provenance(), "command": "fluxlab " + " ".join(sys.argv[1:]), "runs": []}
    for dtype in _csv(args.dtypes):
        report = check_invariance(args.backends or None, dtype=dtype, device=args.device)
        sections.append(f"## {report.meta['dtype']}, {report.meta['input']}, batch {report.meta['batch']}\n\n"
                        + report.to_markdown())
        data["runs"].append({"meta": report.meta, "rows": [r.as_dict() for r in report.rows]})
    if args.model != "none" and not args.no_images:
        generation = _generation_invariance(args)
        sections.append(f"## Whole generations of the {args.model} model\n\n" + generation.to_markdown())
        data["generation"] = generation.as_dict()
    text = "# Determinism and invariance\n\n" + "\n".join(sections)
    atomic_write(out / "invariance.md", text)
    atomic_write(out / "invariance.json", json.dumps(data, indent=1))
    print(text)
    print(f"report: {out / 'invariance.md'}")
    return 0


def _generation_invariance(args):
    from ..models.attach import detach
    from ..models.load import load_flux2
    from .attention import parse_dtype
    from .invariance import PROMPTS, check_generation_invariance

    pipe = load_flux2(args.model, flux2_variant=args.variant, dtype=parse_dtype(_csv(args.dtypes)[0]),
                      device=args.device, offload=args.offload_value, height=64, width=64)
    try:
        return check_generation_invariance(pipe, args.backends or None, prompts=(args.prompt, *PROMPTS[1:]),
                                           seed=args.seed, steps=args.steps)
    finally:
        detach(pipe)


def _sweep(args, out) -> int:
    from .sweep import run_compare

    command = sys.argv[1:] if sys.argv[1:2] == ["compare"] else ["compare"]
    run = run_compare(
        out, backends=args.backends or None, inputs=args.inputs, dtypes=_csv(args.dtypes), seeds=args.seeds,
        model=args.model, variant=args.variant, images=not args.no_images, records=args.records, fmt=args.format,
        steps=args.steps, prompt=args.prompt, seed=args.seed, save_captures=args.save_captures,
        progress=not args.no_progress, device=args.device, offload=args.offload_value,
        command="fluxlab " + " ".join(shlex.quote(a) for a in command))
    for title, report in run.reports.items():
        if getattr(report, "verdicts", None) is not None:
            print(f"{title}: " + ", ".join(f"{name} {verdict}" for name, verdict in report.verdicts.items()))
    for note in run.notes:
        print(f"note: {note}")
    print(f"report: {run.report_path}")
    if run.failed:
        print("some backend FAILED (exit code 1)")
    return run.exit_code
