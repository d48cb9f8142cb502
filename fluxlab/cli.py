"""The ``fluxlab`` command: ``doctor``, ``demo`` and the subcommands other modules register."""

from __future__ import annotations

import argparse
import sys


def _doctor(args) -> int:
    from .doctor import doctor_text
    from .platform import PROFILES, current_platform

    platform = PROFILES[args.profile]() if args.profile else current_platform()
    print(doctor_text(platform))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(out_dir=args.out, source=args.model)


def build_parser() -> argparse.ArgumentParser:
    from .platform import PROFILES

    parser = argparse.ArgumentParser(prog="fluxlab", description="Which attention kernel to trust for FLUX.2, "
                                     "and how fast each one is.")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="list every attention backend, whether it runs here, and why not")
    doctor.add_argument("--profile", choices=sorted(PROFILES), help="judge for another machine's profile")
    doctor.set_defaults(func=_doctor)
    demo = sub.add_parser("demo", help="the offline demo: doctor, then backends compared on this machine")
    demo.add_argument("--out", default="fluxlab-demo", help="folder for the demo's outputs")
    demo.add_argument("--model", default="embedded", help="embedded (trained, draws shapes), tiny (random "
                      "weights), or a local FLUX.2 folder")
    demo.set_defaults(func=_demo)
    for register in _subcommand_modules():
        register(sub)
    return parser


def _subcommand_modules():
    """Modules that add subcommands (each exposes ``add_subcommand(subparsers)``)."""
    import importlib

    found = []
    for name in ("fluxlab.models.cli", "fluxlab.compare.cli", "fluxlab.bench", "fluxlab.parallel.cli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not name.startswith(exc.name or "?"):  # a missing optional module, not a broken one
                raise
            continue
        found.append(module.add_subcommand)
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
