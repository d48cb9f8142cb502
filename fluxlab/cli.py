"""The ``fluxlab`` command: ``doctor``, ``demo`` and the verbs other modules add (``fluxlab.command.VERBS``).
Exit codes: ``fluxlab.command.EXIT_CODES``; how to add a verb: docs/cli.md.
"""

from __future__ import annotations

import importlib
import os
import sys

from .command import (EXIT_INTERRUPTED, EXIT_NO_DEVICE, EXIT_TEXT, EXIT_USAGE, VERBS, NoDeviceError, Parser, UsageError,
                      add_options, deprecated_alias, failed, one_line)
from .errors import FluxlabError

__all__ = ["UsageError", "build_parser", "deprecated_alias", "main", "one_line"]


def check_environment() -> None:
    """A bad ``$FLUXLAB_ATTENTION_BACKEND`` is a usage mistake: name the variable, not just the backend."""
    from .dispatch import ENV_BACKEND, BackendChoice

    value = os.environ.get(ENV_BACKEND, "").strip()
    if not value:
        return
    try:
        BackendChoice.parse(value)
    except (FluxlabError, ValueError, KeyError) as exc:
        raise UsageError(f"${ENV_BACKEND}={value!r} is not a usable backend ({one_line(exc)}); unset it, or set it "
                         "to a name `fluxlab doctor` lists") from None


def _doctor(args) -> int:
    from .doctor import doctor_text
    from .platform import PROFILES, current_platform

    try:
        check_environment()
    except UsageError as exc:  # doctor still runs: it lists the names to choose from
        print(f"fluxlab doctor: note: {exc}", file=sys.stderr)
    platform = PROFILES[args.profile]() if args.profile else current_platform()
    if args.json:
        import json

        from .version import __version__
        from .doctor import report

        print(json.dumps({"fluxlab": __version__, **report(platform)}, indent=2))
    else:
        print(doctor_text(platform))
    return 0


def _demo(args) -> int:
    from .demo import run_demo
    from .models.cli import check_model_source
    from .outputs import output_folder

    check_model_source(args.model)
    with output_folder(args.out, verb="demo", overwrite=args.overwrite) as out:
        try:
            return run_demo(out_dir=str(out), source=args.model, progress=not args.no_progress)
        except FluxlabError as exc:
            return failed("demo", exc)


def add_subcommand(sub) -> None:
    """``doctor`` and ``demo``, the verbs this module runs itself."""
    from .platform import PROFILES

    doctor = sub.add_parser("doctor")
    doctor.add_argument("--profile", choices=sorted(PROFILES), help="judge for another machine's profile")
    doctor.add_argument("--json", action="store_true",
                        help="machine-readable: platform and every backend (available, reasons, version, default)")
    doctor.set_defaults(func=_doctor)
    demo = sub.add_parser("demo")
    add_options(demo, "--out", "--model", "--overwrite", "--no-progress",
                out={"default": "fluxlab-demo", "help": "folder for the demo's outputs"})
    deprecated_alias(demo, "--source", "--model", "model")
    demo.set_defaults(func=_demo)


def build_parser(verbs=None) -> Parser:
    """The ``fluxlab`` parser. ``verbs``: the verbs whose options are added (their modules imported); the others
    get their one-line help only, enough for ``fluxlab --help``. None: every verb."""
    from .version import __version__

    parser = Parser(prog="fluxlab", description="Which attention kernel to trust for FLUX.2, and how fast each "
                    "one is.", epilog=EXIT_TEXT)
    parser.add_argument("--version", action="version", version=f"fluxlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {VERBS[name][0] for name in (VERBS if verbs is None else verbs) if name in VERBS}
    for name, (module, _) in VERBS.items():  # in the order of VERBS: `fluxlab --help` lists them so
        if module in modules:  # the module adds all its verbs
            modules.discard(module)
            _import_verb_module(module).add_subcommand(sub)
        elif name not in sub.choices:  # a placeholder: its help line shows in `fluxlab --help`
            sub.add_parser(name)
    return parser


def _import_verb_module(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if module.startswith(exc.name or "?"):  # a missing optional module, not a broken one
            raise UsageError(f"{module} is not installed here ({exc.name} is missing)") from None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((word for word in argv if not word.startswith("-")), None)  # the first word that is no option
    try:
        args = build_parser([verb]).parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage mistake already printed in one line
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        print(f"fluxlab: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if not hasattr(args, "func"):  # a verb whose module is missing: say so rather than nothing
        print(f"fluxlab {args.command}: error: not available in this install", file=sys.stderr)
        return EXIT_USAGE
    verb = f"fluxlab {args.command}"
    try:
        if args.command != "doctor":  # doctor is where one looks the names up
            check_environment()
            from .terminal import quiet_library_bars

            quiet_library_bars()  # diffusers' loading bars: only where someone watches them redraw
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(f"{verb}: {one_line(exc) if str(exc) else 'interrupted'} (Ctrl-C, exit code 130)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NoDeviceError as exc:
        print(f"{verb}: {one_line(exc)} (exit code {EXIT_NO_DEVICE})", file=sys.stderr)
        return EXIT_NO_DEVICE
    except (FluxlabError, ValueError) as exc:
        print(f"{verb}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
