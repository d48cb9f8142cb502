"""What every ``fluxlab`` verb's command line shares: the parser, usage errors, exit codes, the common options.
Imports nothing heavy (no torch): ``fluxlab --help`` and ``--version`` build their parser from this module alone.
"""

from __future__ import annotations

import argparse
import sys

from .errors import NoDeviceError, UsageError  # noqa: F401 (the verbs import them from here)

# Exit codes, the same for every verb (docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and a backend failed, a verdict is "fail", or a check refused the run
EXIT_USAGE = 2  # a command-line mistake, found before any model loads
EXIT_NO_DEVICE = 3  # the verb needs hardware this machine does not have (bench without a GPU)
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_CODES = {EXIT_OK: "done", EXIT_FAILED: "a backend failed, a verdict is fail, or the work was refused",
              EXIT_USAGE: "a usage mistake (one line on stderr, before any model loads)",
              EXIT_NO_DEVICE: "needs a GPU this machine does not have", EXIT_INTERRUPTED: "Ctrl-C"}
EXIT_TEXT = "Exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()) + "."

from .defaults import DEFAULT_MODEL, DEFAULT_PROMPT  # noqa: E402 - the shared defaults, re-exported for the verbs

MODEL_HELP = ("'embedded' (trained, ships with fluxlab, draws captions like the default prompt), 'tiny' (random "
              "weights: noise), a local pipeline folder, or a Hub id")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless it is None/off or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        if unset or "default:" in text.lower():  # "(default: ...)" written out by the verb
            return text
        return (text + " " if text else "") + "(default: %(default)s)"


class _SubParsers(argparse._SubParsersAction):
    """Sub-parsers whose one-line help comes from ``VERBS`` (declared once) when the verb module gives none."""

    def add_parser(self, name, **kwargs):
        if "help" not in kwargs and name in VERB_HELP:
            kwargs["help"] = VERB_HELP[name]
        kwargs.setdefault("epilog", EXIT_TEXT)
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit code 2 (its sub-parsers inherit this)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Deprecated(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def deprecated_alias(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same destination, ``type=`` etc. in ``kwargs``), with a
    one-line note on stderr."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, **kwargs)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def failed(verb: str, exc: BaseException) -> int:
    """A failure of the work, not of the command line: one line on stderr, exit code 1."""
    print(f"fluxlab {verb}: failed: {one_line(exc)}", file=sys.stderr)
    return EXIT_FAILED


# -- values every verb reads the same way --------------------------------------------------------------------------

SEED_RULE = "whole numbers from 0 to 2**63 - 1"


def seed(text: str) -> int:
    """argparse ``type=`` of ``--seed``: refused by argparse itself (exit 2) when not a valid generator seed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed; give one of the {SEED_RULE}") from None
    if not 0 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"seed must be a whole number from 0 to 2**63 - 1, got {value}")
    return value


def seeds(text: str) -> list[int]:
    """argparse ``type=`` of ``--seeds``: comma-separated seeds, at least one, no repeats."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"no seed given; e.g. 0 or 0,1,2 ({SEED_RULE}, comma-separated)")
    values = [seed(part) for part in parts]
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed; each seed is one generation, give each once")
    return values


def positive(text: str) -> int:
    """argparse ``type=`` of a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_seed_arguments(parser, *, several: bool, help_text: str = "", alias: bool = True) -> None:
    """``--seeds`` (``several``: the verb runs once per seed, ``args.seeds`` a list) or ``--seed`` (one, an int), the
    other spelling hidden and deprecated; ``alias`` False where the verb has both, each with its own meaning."""
    flag, other, kind = ("--seeds", "--seed", seeds) if several else ("--seed", "--seeds", seed)
    what = "comma-separated generator seeds" if several else "generator seed"
    parser.add_argument(flag, type=kind, default="0" if several else 0, metavar=flag[2:].upper(),
                        help=help_text or f"{what} ({SEED_RULE})")
    if alias:
        deprecated_alias(parser, other, flag, flag[2:], type=kind)


# -- options several verbs share, declared once (``add_options``) --------------------------------------------------

OPTIONS = {
    "--out": {"help": "output folder"},
    "--overwrite": {"action": "store_true", "help": "write into --out although it holds files fluxlab did not write"},
    "--no-progress": {"action": "store_true",
                      "help": "no progress bar (there is none anyway when stderr is not a terminal or a notebook)"},
    "--model": {"default": DEFAULT_MODEL, "help": MODEL_HELP},
    "--prompt": {"default": DEFAULT_PROMPT, "help": "what to draw"},
    "--steps": {"type": int, "default": 4, "help": "denoising steps"},
    "--device": {"help": "e.g. cuda (default: where the model loads)"},
    "--dtype": {"choices": ("bf16", "bfloat16", "float16", "float32", "fp16", "fp32"), "metavar": "DTYPE",
                "help": "bf16, fp16 or fp32 (or bfloat16, float16, float32) (default: as the model was saved)"},
    "--offload": {"choices": ("none", "model", "sequential", "auto"), "default": "none",
                  "help": "where the weights rest: none (all on --device), model (one component at a time on the GPU), "
                          "sequential (one layer at a time: least memory, slowest), auto (the first that fits free GPU "
                          "memory; none without a GPU). A pipeline that cannot fit is refused before loading, with the "
                          "estimate"},
    "--variant": {"choices": ("dev", "klein"),
                  "help": "FLUX.2 variant (tiny: default dev; a saved or embedded model knows its own)"},
}


def add_options(parser, *flags: str, **changes) -> None:
    """Add the shared ``OPTIONS`` named in ``flags``. ``changes``, by destination (``out=...``): a default, or a dict
    of argparse keywords replacing the shared ones."""
    for flag in flags:
        change = changes.get(flag.lstrip("-").replace("-", "_"), {})
        parser.add_argument(flag, **{**OPTIONS[flag], **(change if isinstance(change, dict) else {"default": change})})


# -- the verbs, declared once: name -> (module that adds it, one-line help) ----------------------------------------

VERBS = {
    "doctor": ("fluxlab.cli", "list every attention backend, whether it runs here, and why not"),
    "demo": ("fluxlab.cli", "the offline demo: doctor, then backends compared on this machine"),
    "generate": ("fluxlab.models.cli", "generate the same FLUX.2 image with each attention backend (PNG + "
                 "manifest.json each)"),
    "compare": ("fluxlab.compare.cli", "compare attention backends with float64 (synthetic + FLUX.2) and write a "
                "report"),
    "bench": ("fluxlab.bench", "attention TFLOP/s and error per backend at FLUX.2 shapes (GPU)"),
    "parallel": ("fluxlab.parallel.cli", "sequence-parallel FLUX.2 (Ulysses/ring): capability checks and "
                 "N-vs-1-rank comparison"),
    "locate-drift": ("fluxlab.decide.cli", "which attention layers x denoising steps make a kernel's image drift"),
    "frontier": ("fluxlab.decide.cli", "step time vs image fidelity of a fast kernel's schedules, Pareto set marked"),
    "autotune": ("fluxlab.decide.cli", "per attention layer, the fastest kernel whose verdict on the layer's real "
                 "inputs is pass"),
}
VERB_HELP = {name: text for name, (_, text) in VERBS.items()}


def check_distinct(option: str, given: list[str], resolved: list[str]) -> None:
    """Refuse a list that names one backend twice (``sdpa,SDPA,native``): it would run the same kernel again and
    report it as another row. ``given``: as typed; ``resolved``: the canonical spec of each."""
    seen: dict[str, list[str]] = {}
    for typed, name in zip(given, resolved):
        seen.setdefault(name, []).append(typed)
    repeated = {name: typed for name, typed in seen.items() if len(typed) > 1}
    if repeated:
        what = "; ".join(f"{', '.join(typed)} are all {name}" for name, typed in repeated.items())
        raise UsageError(f"{option} names the same kernel more than once ({what}); name each backend once")


def split_list(text: str | None) -> list[str]:
    """A comma-separated option as its non-empty parts."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
