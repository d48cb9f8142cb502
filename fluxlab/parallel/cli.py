"""``fluxlab parallel``: ``check`` (may this backend serve Ulysses/ring here?) and ``compare`` (N ranks vs 1 rank)."""

from __future__ import annotations

import sys

EPILOG = ("Modes: 'ulysses=N' (all-to-all over heads; heads must divide by N), 'ring=N' (K/V passed around; the "
          "backend must return the log-sum-exp), 'ulysses=N,ring=M' (both, N*M ranks). Exit codes: 0 when every "
          "check passes / every verdict is pass, 1 otherwise, 2 for a usage mistake, 130 Ctrl-C.")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "parallel", help="sequence-parallel FLUX.2 (Ulysses/ring): capability checks and N-vs-1-rank comparison",
        description="Sequence parallelism on diffusers' context parallelism with fluxlab's backends inside.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="parallel_command", required=True)

    check = sub.add_parser("check", help="say why a backend cannot serve a parallel mode (nothing is launched)",
                           epilog=EPILOG)
    check.add_argument("--parallel", required=True, help="mode, e.g. ulysses=2, ring=2, ulysses=2,ring=2")
    check.add_argument("--backends", required=True, help="comma-separated fluxlab backends")
    _shape_arguments(check, default_size="dev")
    from ..platform import PROFILES

    check.add_argument("--profile", choices=sorted(PROFILES), help="judge for another machine's profile")
    check.add_argument("--gpus", type=int, help="GPUs on that machine (a profile says 1)")
    check.set_defaults(func=_check)

    compare = sub.add_parser("compare", help="run N ranks and 1 rank with the same backend and judge the difference",
                             epilog=EPILOG)
    compare.add_argument("--parallel", action="append", required=True,
                         help="mode (repeatable, one rank count per call), e.g. --parallel ulysses=2 --parallel ring=2")
    compare.add_argument("--backends", default="sdpa", help="comma-separated fluxlab backends")
    _shape_arguments(compare, default_size="tiny")
    compare.add_argument("--target", choices=("forward", "generate"), default="forward",
                         help="one transformer step (default) or a whole tiny generation")
    compare.add_argument("--steps", type=int, default=4, help="denoising steps of --target generate")
    compare.add_argument("--seed", type=int, default=0, help="0 to 2**63 - 1")
    compare.add_argument("--repeats", type=int, help="timed runs per case (default 3 on GPU, 1 on CPU)")
    compare.add_argument("--warmup", type=int, help="untimed runs first (default 1 on GPU, 0 on CPU)")
    compare.add_argument("--setup", help="module:function every rank calls first (e.g. to register your kernel)")
    compare.add_argument("--json", help="write the rows and metadata to this file")
    compare.add_argument("--timeout", type=float, default=600, help="seconds before the ranks are stopped")
    compare.set_defaults(func=_compare)


def _shape_arguments(parser, default_size: str) -> None:
    from ..cli import deprecated_alias

    parser.add_argument("--model", dest="size", choices=("tiny", "dev"), default=default_size,
                        help="transformer: FLUX.2 [dev] (48 heads x 128) or fluxlab's tiny one")
    deprecated_alias(parser, "--size", "--model", "size")
    parser.add_argument("--height", type=int, help="image height in pixels (tokens = height/16 x width/16)")
    parser.add_argument("--width", type=int, help="image width in pixels")
    parser.add_argument("--text-tokens", type=int, help="text tokens (FLUX.2 pads prompts to 512)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default bf16 on GPU, fp32 on CPU")


def _check_arguments(args) -> None:
    """Command-line mistakes, before any rank starts (main() exits 2 with them)."""
    from ..cli import UsageError
    from ..models.generate import check_size
    from ..models.limits import seed_problem
    from ..registry import get_backend
    from .checks import ParallelSpec

    if args.size not in ("tiny", "dev"):  # --size (deprecated) is not checked by argparse's choices
        raise UsageError(f"--model {args.size!r}: choose tiny or dev")
    for mode in args.parallel if isinstance(args.parallel, list) else [args.parallel]:
        ParallelSpec.parse(mode)
    names = _csv(args.backends)
    if not names:
        raise UsageError("--backends is empty; give comma-separated fluxlab backends, e.g. sdpa,sdpa_flash")
    if not getattr(args, "setup", None):  # --setup may register them: compare_parallel checks after running it
        for name in names:
            get_backend(name)  # unknown names raise with the closest match
    if args.height is not None or args.width is not None:
        check_size(args.width or 16, args.height or 16)
    if args.text_tokens is not None and args.text_tokens < 1:
        raise UsageError(f"--text-tokens must be >= 1, got {args.text_tokens}")
    for name in ("gpus", "repeats", "steps"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if getattr(args, "warmup", None) is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if getattr(args, "timeout", 1) <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if getattr(args, "seed", None) is not None and seed_problem(args.seed):
        raise UsageError(seed_problem(args.seed))
    setup = getattr(args, "setup", None)
    if setup:
        import importlib.util

        module, _, function = setup.partition(":")
        try:
            found = bool(module) and importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not function or not found:
            raise UsageError(f"--setup {setup!r}: give module:function of an importable module (here: "
                             f"{'no module ' + repr(module) if not found else 'no function after the colon'})")
    json_path = getattr(args, "json", None)
    if json_path:
        from pathlib import Path

        path = Path(json_path)
        if path.is_dir() or (path.parent.exists() and not path.parent.is_dir()):
            raise UsageError(f"--json {json_path}: needs a file path in an existing folder")


def _check(args) -> int:
    import dataclasses

    from ..platform import PROFILES, current_platform
    from .checks import check_parallel
    from .compare import DTYPES, _shape
    from .model import TRANSFORMER_CONFIGS, image_tokens

    _check_arguments(args)
    platform = PROFILES[args.profile]() if args.profile else current_platform()
    if args.gpus is not None:
        platform = dataclasses.replace(platform, device_count=args.gpus)
    config = TRANSFORMER_CONFIGS[args.size]
    height, width, text = _shape(args.size, "forward", args.height, args.width, args.text_tokens)
    dtype = DTYPES[args.dtype] if args.dtype else (DTYPES["bf16"] if platform.is_gpu else DTYPES["fp32"])
    failed = False
    print(f"{args.parallel} on {platform.describe()}; FLUX.2 {args.size}: {config['num_attention_heads']} heads x "
          f"{config['attention_head_dim']}, {height}x{width} ({text} text + {image_tokens(height, width)} image "
          f"tokens), {args.dtype or str(dtype).split('.')[-1]}")
    for backend in _csv(args.backends):
        reasons = check_parallel(backend, args.parallel, heads=config["num_attention_heads"],
                                 head_dim=config["attention_head_dim"], dtype=dtype, platform=platform,
                                 seq_lens={"text": text, "image": image_tokens(height, width)})
        failed |= bool(reasons)
        print(f"  {backend}: " + ("ok" if not reasons else "refused\n    - " + "\n    - ".join(reasons)))
    return 1 if failed else 0


def _compare(args) -> int:
    import warnings

    from .checks import ParallelRefusedError
    from .compare import compare_parallel

    _check_arguments(args)
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    try:
        result = compare_parallel(args.parallel, _csv(args.backends), size=args.size, target=args.target,
                                  height=args.height, width=args.width, text_tokens=args.text_tokens,
                                  dtype=args.dtype, steps=args.steps, seed=args.seed, repeats=args.repeats,
                                  warmup=args.warmup, setup=args.setup, timeout_s=args.timeout)
    except ParallelRefusedError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(result.table())
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    return 0 if result.passed else 1
