"""The ``fluxlab`` command: ``doctor``, ``demo`` and the verbs other modules register (``SUBCOMMAND_MODULES``).

Exit codes, for every verb: 0 done; 1 a backend failed or a verdict is "fail"; 2 a usage mistake, reported as one
line on stderr before any model loads; 130 Ctrl-C.

Adding a verb: write a module with ``add_subcommand(subparsers)`` that calls ``subparsers.add_parser(...)`` (which
gives it one-line usage errors and defaults in ``--help``) and ``set_defaults(func=run)``, where ``run(args) -> int``;
then add the module's name to ``SUBCOMMAND_MODULES``. ``run`` raises ``UsageError`` (any ``FluxlabError`` or
``ValueError`` does) for a user mistake found before the work starts: ``main`` prints it and returns 2. Failures of
the work itself are the verb's to report: print them and return 1. Use ``--model``, ``--backends`` (comma-separated)
and ``--out`` (with a default, through ``fluxlab.outputs.output_folder``) like the other verbs; ``deprecated_alias``
keeps an old spelling working with a note.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import FluxlabError

# Modules that add verbs; a module that is missing (an optional extra) is skipped, a broken one raises.
SUBCOMMAND_MODULES = ("fluxlab.models.cli", "fluxlab.compare.cli", "fluxlab.bench", "fluxlab.parallel.cli",
                      "fluxlab.decide.cli")


class UsageError(FluxlabError, ValueError):
    """A command-line mistake found before any work: printed as one line, exit code 2."""


def _unset(default) -> bool:
    """No default worth showing: None, an off switch, an empty list (0 is a default worth showing)."""
    return default is None or default is False or default == [] or default == argparse.SUPPRESS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it is None/off or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if _unset(action.default) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit code 2 (its sub-parsers inherit this)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if "help" not in kwargs and not _unset(kwargs.get("default")):
            kwargs["help"] = " "  # so the formatter has a line to append "(default: ...)" to
        return super().add_argument(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Deprecated(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated_alias(parser, old: str, new: str, dest: str) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same destination), with a one-line note on stderr."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
            return run_demo(out_dir=str(out), source=args.model)
        except FluxlabError as exc:
            print(f"fluxlab demo: failed: {one_line(exc)}", file=sys.stderr)
            return 1


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    from .platform import PROFILES

    parser = Parser(prog="fluxlab", description="Which attention kernel to trust for FLUX.2, and how fast each "
                    "one is. Exit codes: 0 done, 1 a backend failed, 2 a usage mistake, 130 Ctrl-C.")
    parser.add_argument("--version", action="version", version=f"fluxlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="list every attention backend, whether it runs here, and why not")
    doctor.add_argument("--profile", choices=sorted(PROFILES), help="judge for another machine's profile")
    doctor.add_argument("--json", action="store_true",
                        help="machine-readable: platform and every backend (available, reasons, version, default)")
    doctor.set_defaults(func=_doctor)
    demo = sub.add_parser("demo", help="the offline demo: doctor, then backends compared on this machine")
    demo.add_argument("--out", default="fluxlab-demo", help="folder for the demo's outputs")
    demo.add_argument("--model", default="embedded", help="embedded (trained, draws shapes), tiny (random "
                      "weights), or a local FLUX.2 folder")
    demo.add_argument("--overwrite", action="store_true",
                      help="write into --out although it holds files fluxlab did not write")
    demo.set_defaults(func=_demo)
    for register in _subcommand_modules():
        register(sub)
    return parser


def _subcommand_modules():
    """``add_subcommand`` of each module in SUBCOMMAND_MODULES that is installed."""
    import importlib

    found = []
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not name.startswith(exc.name or "?"):  # a missing optional module, not a broken one
                raise
            continue
        found.append(module.add_subcommand)
    return found


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage mistake already printed in one line
        return exc.code if isinstance(exc.code, int) else 0
    verb = f"fluxlab {args.command}"
    try:
        if args.command != "doctor":  # doctor is where one looks the names up
            check_environment()
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(f"{verb}: {one_line(exc) if str(exc) else 'interrupted'} (Ctrl-C, exit code 130)", file=sys.stderr)
        return 130
    except (FluxlabError, ValueError) as exc:
        print(f"{verb}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
