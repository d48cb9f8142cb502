"""``fluxlab compare``: run the equivalence sweep and write a report; exit code 1 if any backend fails."""

from __future__ import annotations

import shlex
import sys

from .specs import KNOBS

EPILOG = ("Backend specs take options and torch knobs: 'aiter:how_v3_bf16_cvt=0', "
          + ", ".join(f"'sdpa:{k}=0' ({v.description})" for k, v in KNOBS.items())
          + ". Exit code: 0 when no backend fails, 1 when any does.")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare attention backends with float64 (synthetic + tiny FLUX.2) and write a report",
        description="Judge every attention backend against float64, with torch's own error in the same dtype as "
                    "the yardstick; captured FLUX.2 attention and images too where the tiny model is available.",
        epilog=EPILOG)
    parser.add_argument("--out", default="fluxlab-compare", help="folder for report.md/.html and PNGs")
    parser.add_argument("--format", choices=("md", "html"), default="md", help="report format (default md)")
    parser.add_argument("--backends", help="comma-separated backend specs (default: every backend that runs here)")
    parser.add_argument("--inputs", choices=("default", "cpu", "flux", "smoke", "none"), default="default",
                        help="synthetic set: sized for this machine (default), the CPU set (S 512-1024), the FLUX.2 "
                             "shapes (S 4608/16896), a seconds-long smoke set (S 192), or none")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated dtypes for synthetic inputs "
                        "(bf16, fp16, fp32)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds for synthetic inputs")
    parser.add_argument("--model", default="tiny", help="model to capture attention from and generate images "
                        "with ('none' to skip)")
    parser.add_argument("--variant", choices=("dev", "klein"),
                        help="for --model tiny (default dev); a saved or embedded model knows its own")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompt", default="a red fox in the snow")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image generation")
    parser.add_argument("--no-images", action="store_true", help="skip the image comparison")
    parser.add_argument("--records", action="append", default=[], metavar="DIR",
                        help="replay records saved elsewhere (repeatable)")
    parser.add_argument("--save-captures", action="store_true", help="save the captured records under OUT/records")
    parser.add_argument("--device", help="where to compare (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--parallel", action="append", default=[], metavar="MODE",
                        help="instead of the sweep: the same transformer step on N ranks vs 1 rank per backend, e.g. "
                             "--parallel ulysses=2 --parallel ring=2 (repeatable; see `fluxlab parallel`)")
    parser.set_defaults(func=_run)


def _run_parallel(args) -> int:
    from pathlib import Path

    from ..parallel import ParallelRefusedError, compare_parallel

    try:
        result = compare_parallel(args.parallel, _csv(args.backends) if args.backends else ["sdpa"],
                                  seed=args.seed)
    except ParallelRefusedError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parallel.md").write_text(result.markdown() + "\n")
    print(result.markdown())
    print(f"report: {out / 'parallel.md'}")
    if not result.passed:
        print("some parallel run FAILED (exit code 1)")
    return 0 if result.passed else 1


def _run(args) -> int:
    if args.parallel:
        return _run_parallel(args)
    from .sweep import run_compare

    run = run_compare(
        args.out, backends=args.backends or None, inputs=args.inputs,
        dtypes=_csv(args.dtypes), seeds=[int(s) for s in _csv(args.seeds)], model=args.model,
        variant=args.variant, images=not args.no_images, records=args.records, fmt=args.format, steps=args.steps,
        prompt=args.prompt, seed=args.seed, save_captures=args.save_captures, progress=not args.no_progress,
        device=args.device,
        command="fluxlab " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["compare"]
        else "fluxlab compare")
    for title, report in run.reports.items():
        verdicts = getattr(report, "verdicts", None)
        if verdicts is not None:
            print(f"{title}: " + ", ".join(f"{name} {verdict}" for name, verdict in verdicts.items()))
    for note in run.notes:
        print(f"note: {note}")
    print(f"report: {run.report_path}")
    if run.failed:
        print("some backend FAILED (exit code 1)")
    return run.exit_code
