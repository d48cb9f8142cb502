"""``fluxlab parallel``: ``check`` (may this backend serve Ulysses/ring here?) and ``compare`` (N ranks vs 1 rank)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..command import EXIT_TEXT, split_list as _csv

EPILOG = ("Modes: 'ulysses=N' (all-to-all over heads; heads must divide by N), 'ring=N' (K/V passed around; the "
          "backend must return the log-sum-exp), 'ulysses=N,ring=M' (both, N*M ranks). " + EXIT_TEXT)
# --model: the transformer architecture the checks and runs use (random weights of that shape).
CHECK_MODELS = ("embedded", "tiny", "dev")
RUN_MODELS = ("tiny", "dev")  # parallel compare builds the transformer on every rank: these two are built in


def parallel_modes(values, option: str = "--parallel") -> None:
    """Refuse a mode that does not parse or is not parallel (a degree of 0, or 1 rank in all): before any work."""
    from ..command import UsageError
    from .checks import ParallelSpec

    for text in values if isinstance(values, list) else [values]:
        spec = ParallelSpec.parse(text)
        if min(spec.ulysses, spec.ring) < 1 or spec.degree < 2:
            raise UsageError(f"{option} {text}: a parallel mode splits over at least 2 ranks (degree 0 or 1 in "
                             "every part is no split); write e.g. ulysses=2, ring=2 or ulysses=2,ring=2")


class _SizeOrOldModel(argparse.Action):
    """``--size N|WIDTHxHEIGHT``; a model name there is the old spelling of ``--model`` (with a note)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values in CHECK_MODELS:
            print(f"{parser.prog}: note: --size {values} is deprecated; use --model {values}", file=sys.stderr)
            namespace.model = values
        else:
            namespace.image_size = values


def add_subcommand(subparsers) -> None:
    from ..command import add_seed_arguments
    from ..platform import PROFILES

    parser = subparsers.add_parser(
        "parallel",
        description="Sequence parallelism on diffusers' context parallelism with fluxlab's backends inside.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="parallel_command", required=True)

    check = sub.add_parser("check", help="say why a backend cannot serve a parallel mode (nothing is launched)",
                           epilog=EPILOG)
    check.add_argument("--parallel", required=True, help="mode, e.g. ulysses=2, ring=2, ulysses=2,ring=2")
    check.add_argument("--backends", required=True, help="comma-separated fluxlab backends")
    _shape_arguments(check, CHECK_MODELS)
    check.add_argument("--profile", choices=sorted(PROFILES), help="judge for another machine's profile")
    check.add_argument("--gpus", type=int, help="GPUs on that machine (a profile says 1)")
    check.set_defaults(func=_check)

    compare = sub.add_parser("compare", help="run N ranks and 1 rank with the same backend and judge the difference",
                             epilog=EPILOG)
    compare.add_argument("--parallel", action="append", required=True,
                         help="mode (repeatable, one rank count per call), e.g. --parallel ulysses=2 --parallel ring=2")
    compare.add_argument("--backends", default="sdpa", help="comma-separated fluxlab backends")
    _shape_arguments(compare, RUN_MODELS)
    compare.add_argument("--target", choices=("forward", "generate"), default="forward",
                         help="one transformer step or a whole tiny generation")
    compare.add_argument("--steps", type=int, default=4, help="denoising steps of --target generate")
    add_seed_arguments(compare, several=False)
    compare.add_argument("--repeats", type=int, help="timed runs per case (default 3 on GPU, 1 on CPU)")
    compare.add_argument("--warmup", type=int, help="untimed runs first (default 1 on GPU, 0 on CPU)")
    compare.add_argument("--setup", help="module:function every rank calls first (e.g. to register your kernel)")
    compare.add_argument("--json", help="write the rows and metadata to this file")
    compare.add_argument("--timeout", type=float, default=600, help="seconds before the ranks are stopped")
    compare.set_defaults(func=_compare)


def _shape_arguments(parser, models: tuple[str, ...]) -> None:
    from ..command import deprecated_alias

    described = {"embedded": "the embedded model's (4 heads x 32)", "dev": "FLUX.2 [dev] (48 heads x 128)",
                 "tiny": "fluxlab's tiny test model's"}
    parser.add_argument("--model", choices=models, default=models[0], help="the transformer's architecture, with "
                        "random weights: " + ", ".join(described[m] for m in models))
    parser.add_argument("--size", dest="image_size", action=_SizeOrOldModel, default=None, metavar="SIZE",
                        help="image size in pixels, N or WIDTHxHEIGHT (default: 128 for tiny, 64 for embedded, 1024 "
                             "for dev)")
    deprecated_alias(parser, "--height", "--size", "height", type=int)
    deprecated_alias(parser, "--width", "--size", "width", type=int)
    parser.add_argument("--text-tokens", type=int, help="text tokens (FLUX.2 pads prompts to 512)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default bf16 on GPU, fp32 on CPU")


def _check_arguments(args) -> None:
    """Command-line mistakes, before any rank starts (main() exits 2 with them)."""
    import importlib.util

    from ..command import UsageError, check_distinct
    from ..dispatch import BackendChoice
    from ..models.generate import check_size, parse_size

    models = CHECK_MODELS if args.parallel_command == "check" else RUN_MODELS
    if args.model not in models:  # --size MODEL (deprecated) is not checked by argparse's choices
        raise UsageError(f"--model {args.model!r}: choose one of {', '.join(models)}")
    parallel_modes(args.parallel)
    names = _csv(args.backends)
    if not names:
        raise UsageError("--backends is empty; give comma-separated fluxlab backends, e.g. sdpa,sdpa_flash")
    setup = getattr(args, "setup", None)
    if not setup:  # --setup may register them: compare_parallel checks after running it
        check_distinct("--backends", names, [str(BackendChoice.parse(name)) for name in names])
    multiple = 8 if args.model == "embedded" else 16  # the embedded model's VAE has one level less
    width, height = getattr(args, "width", None), getattr(args, "height", None)
    if args.image_size is not None:
        width, height = parse_size(args.image_size, multiple)
    elif width is not None or height is not None:
        check_size(width or multiple, height or multiple, multiple)
    args.width, args.height = width, height
    for name, minimum in (("text_tokens", 1), ("gpus", 1), ("repeats", 1), ("steps", 1), ("warmup", 0)):
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    if getattr(args, "timeout", 1) <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if setup:
        module, _, function = setup.partition(":")
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not function or not found:
            raise UsageError(f"--setup {setup!r}: give module:function of an importable module (here: "
                             f"{'no module ' + repr(module) if not found else 'no function after the colon'})")
    path = Path(getattr(args, "json", None) or "")
    if path.name and (path.is_dir() or (path.parent.exists() and not path.parent.is_dir())):
        raise UsageError(f"--json {args.json}: needs a file path in an existing folder")


def _check(args) -> int:
    import dataclasses
    import json

    from ..models.embedded import EMBEDDED_DIR
    from ..platform import PROFILES, current_platform
    from .checks import check_parallel
    from .compare import DTYPES, _shape
    from .model import TRANSFORMER_CONFIGS, image_tokens

    _check_arguments(args)
    platform = PROFILES[args.profile]() if args.profile else current_platform()
    if args.gpus is not None:
        platform = dataclasses.replace(platform, device_count=args.gpus)
    if args.model == "embedded":
        config = json.loads((EMBEDDED_DIR / "transformer" / "config.json").read_text())
        height, width, text = args.height or 64, args.width or 64, args.text_tokens or 512
        tokens = (height // 8) * (width // 8)  # its VAE scales by 4, then 2x2 patches
    else:
        config = TRANSFORMER_CONFIGS[args.model]
        height, width, text = _shape(args.model, "forward", args.height, args.width, args.text_tokens)
        tokens = image_tokens(height, width)
    dtype = DTYPES[args.dtype or ("bf16" if platform.is_gpu else "fp32")]
    failed = False
    print(f"{args.parallel} on {platform.describe()}; FLUX.2 {args.model}: {config['num_attention_heads']} heads x "
          f"{config['attention_head_dim']}, {height}x{width} ({text} text + {tokens} image "
          f"tokens), {args.dtype or str(dtype).split('.')[-1]}")
    for backend in _csv(args.backends):
        reasons = check_parallel(backend, args.parallel, heads=config["num_attention_heads"],
                                 head_dim=config["attention_head_dim"], dtype=dtype, platform=platform,
                                 seq_lens={"text": text, "image": tokens})
        failed |= bool(reasons)
        print(f"  {backend}: " + ("ok" if not reasons else "refused\n    - " + "\n    - ".join(reasons)))
    return 1 if failed else 0


def _compare(args) -> int:
    import warnings

    from ..command import failed
    from ..errors import FluxlabError
    from .checks import ParallelRefusedError
    from .compare import compare_parallel

    _check_arguments(args)
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    try:
        result = compare_parallel(args.parallel, _csv(args.backends), size=args.model, target=args.target,
                                  height=args.height, width=args.width, text_tokens=args.text_tokens,
                                  dtype=args.dtype, steps=args.steps, seed=args.seed, repeats=args.repeats,
                                  warmup=args.warmup, setup=args.setup, timeout_s=args.timeout)
    except ParallelRefusedError as exc:
        print(exc, file=sys.stderr)
        return 1
    except FluxlabError as exc:  # the ranks' work failed, not the command line
        return failed("parallel compare", exc)
    print(result.table())
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0 if result.passed else 1
