"""How large a FLUX.2 generation fluxlab starts without ``force=True`` (one table of bounds, docs/guide.md "Limits"),
the checks every generating entry point asks before any work, and diffusers' keyword names accepted beside ours."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import numbers
from pathlib import Path

from ..errors import InvalidSettingError, InvalidSizeError, LimitExceededError


@dataclasses.dataclass(frozen=True)
class Bound:
    low: int
    high: int
    forceable: bool  # above ``high`` runs with force=True / --force; below ``low`` never does
    why: str


# Image tokens are (height / m) x (width / m) for the model's multiple m.
BOUNDS = {
    "image_tokens": Bound(1, 16384, True, "2048x2048 on FLUX.2 [dev], about 4 MP, its largest documented size"),
    "side": Bound(1, 4096, True, "a side beyond 4096 px is outside what FLUX.2 was trained on"),
    "max_sequence_length": Bound(1, 512, True, "the FLUX.2 pipelines' default text length; every extra text "
                                               "token is attended by every image token in every block"),
    "steps": Bound(1, 1000, True, "the scheduler's 1000 training timesteps; FLUX.2 [dev] uses 28-50, Klein 4"),
    "seed": Bound(0, 2**63 - 1, False, "torch.Generator seeds are 64-bit; fluxlab keeps them non-negative"),
}
DEFAULT_MULTIPLE = 16  # FLUX.2's 8x VAE and 2x2 latent patches; tiny VAEs with fewer levels allow less
DEFAULT_HEADS = 48  # FLUX.2 [dev], for the memory estimate when no model is at hand
FORCE_HINT = "pass force=True (fluxlab generate --force) to run it anyway"
# diffusers' pipeline-call name -> fluxlab's name for the same setting.
DIFFUSERS_NAMES = {"num_inference_steps": "steps"}
# What a generation of the decide tools or compare_images sets itself: passing one of them as a pipeline keyword
# would clash (a TypeError deep in the call) or silently change what is compared; -> the argument to use instead.
OWN_PIPE_KWARGS = {"prompt": "prompt=", "num_inference_steps": "steps=", "generator": "seed=", "output_type": None,
                   "callback_on_step_end": None, "callback_on_step_end_tensor_inputs": None, "height": "height=",
                   "width": "width=", "latents": None}


def required_multiple(pipe=None) -> int:
    """Image sides must be multiples of this (the VAE's downscale x the 2x2 latent packing); 16 for FLUX.2."""
    factor = getattr(pipe, "vae_scale_factor", None)
    return int(factor) * 2 if isinstance(factor, int) and factor > 0 else DEFAULT_MULTIPLE


def size_multiple_for(source: str) -> int:
    """``required_multiple`` of a model before loading it, from its VAE config (``"embedded"``, a local folder);
    ``"tiny"`` and Hub ids: FLUX.2's 16."""
    folder = Path(__file__).with_name("embedded") if source == "embedded" else Path(str(source)).expanduser()
    try:
        return vae_multiple(json.loads((folder / "vae" / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return DEFAULT_MULTIPLE


def vae_multiple(vae_config: dict) -> int:
    """The VAE's downscale x the 2x2 latent packing, from its config (FLUX.2's 4 levels where it says nothing)."""
    return 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1) * 2


def _whole(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def side_problem(value, name: str, multiple: int = DEFAULT_MULTIPLE, force: bool = False) -> str | None:
    """Why ``value`` cannot be an image side (with the nearest valid sizes), or None."""
    if not _whole(value):
        return f"{name} must be a whole number of pixels, got {value!r}"
    bound = BOUNDS["side"]
    if value < multiple:
        return f"{name} must be between {multiple} and {bound.high} pixels, a multiple of {multiple} (got {value})"
    if value % multiple:
        lower = value // multiple * multiple
        return (f"{name} {value} is not a multiple of {multiple} (this model's VAE scale x 2x2 latent patches; "
                f"diffusers would silently shrink it to {lower}): use {lower} or {lower + multiple}")
    if value > bound.high and not force:
        return f"{name} {value} is above fluxlab's bound of {bound.high} px ({bound.why}); {FORCE_HINT}"
    return None


def tokens_problem(width: int, height: int, multiple: int = DEFAULT_MULTIPLE, text_tokens: int = 512,
                   heads: int = DEFAULT_HEADS, force: bool = False) -> str | None:
    """Why a width x height image is too much work without ``force``, with the token and memory estimate."""
    bound = BOUNDS["image_tokens"]
    tokens = (width // multiple) * (height // multiple)
    if tokens <= bound.high or force:
        return None
    seq = tokens + text_tokens
    return (f"{width}x{height} is {tokens:,} image tokens (+{text_tokens} text = {seq:,} per attention call), "
            f"above fluxlab's bound of {bound.high:,} ({bound.why}): attention work per step is "
            f"{(seq / (bound.high + 512)) ** 2:,.0f}x that of the bound, and an unfused kernel (reference, "
            f"sdpa_math) would hold {heads * seq * seq * 4 / 2**30:,.0f} GiB of float32 scores per call; {FORCE_HINT}")


def text_tokens_problem(value, force: bool = False) -> str | None:
    bound = BOUNDS["max_sequence_length"]
    if not _whole(value) or value < bound.low:
        return f"max_sequence_length must be a whole number >= {bound.low}, got {value!r}"
    if value > bound.high and not force:
        return (f"max_sequence_length {value:,} is above fluxlab's bound of {bound.high} ({bound.why}): the text "
                f"encoder and every attention call would process {value - bound.high:,} extra tokens; {FORCE_HINT}")
    return None


def steps_problem(value, force: bool = False) -> str | None:
    bound = BOUNDS["steps"]
    if not _whole(value) or value < bound.low:
        return f"steps must be a whole number >= {bound.low}, got {value!r}"
    if value > bound.high and not force:
        return f"steps {value} is above fluxlab's bound of {bound.high} ({bound.why}); {FORCE_HINT}"
    return None


def seed_problem(value) -> str | None:
    bound = BOUNDS["seed"]
    if not _whole(value) or not bound.low <= value <= bound.high:
        return f"seed must be a whole number from 0 to 2**63 - 1, got {value!r}"
    return None


def seed_values(seeds) -> list:
    """``seeds=`` (one seed or several; numpy integers count) as a non-empty list; each seed is left for
    ``seed_problem`` to judge, so a fractional one is refused, never rounded."""
    values = [seeds] if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__") else list(seeds)
    if not values:
        raise InvalidSettingError("seeds= is empty; pass at least one seed, e.g. seeds=(0, 1, 2)")
    return [int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v for v in values]


def _prompt_problem(value) -> str | None:
    """An empty prompt is almost always a mistake (an unset variable); None means prompt_embeds are passed."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        return f"prompt must be a non-empty text, got {value!r}; e.g. prompt='a red circle'"
    return None


def _guidance_problem(value) -> str | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value < 0):
        return f"guidance_scale must be a finite number >= 0 (or None for the pipeline's own), got {value!r}"
    return None


def check_generation(*, width, height, steps, seed, max_sequence_length=512, multiple: int = DEFAULT_MULTIPLE,
                     heads: int = DEFAULT_HEADS, force: bool = False, guidance_scale=None, prompt=None) -> None:
    """Raise before any work if the request is malformed (always) or beyond ``BOUNDS`` (unless ``force``).
    ``prompt`` None is not checked (the pipeline gets ``prompt_embeds`` instead)."""
    sides = [side_problem(width, "width", multiple, True), side_problem(height, "height", multiple, True)]
    settings = [steps_problem(steps, True), seed_problem(seed), text_tokens_problem(max_sequence_length, True),
                _guidance_problem(guidance_scale), _prompt_problem(prompt)]
    beyond = [tokens_problem(width, height, multiple, max_sequence_length, heads, force),
              side_problem(width, "width", multiple, force), side_problem(height, "height", multiple, force),
              steps_problem(steps, force), text_tokens_problem(max_sequence_length, force)]
    for problems, error in ((sides, InvalidSizeError), (settings, InvalidSettingError), (beyond, LimitExceededError)):
        if any(problems):
            raise error(next(p for p in problems if p))


def check_pipe_generation(pipe, *, prompt, width, height, steps, seed, force: bool = False, guidance_scale=None,
                          max_sequence_length=512) -> None:
    """``check_generation`` for a loaded ``pipe`` (its size multiple, its head count for the estimate)."""
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    check_generation(width=width, height=height, steps=steps, seed=seed, multiple=required_multiple(pipe),
                     max_sequence_length=max_sequence_length, force=force, guidance_scale=guidance_scale,
                     heads=getattr(config, "num_attention_heads", DEFAULT_HEADS), prompt=prompt)


def check_pipe_kwargs(pipe_kwargs, who: str, error=None) -> None:
    """Refuse extra pipeline keywords that the generation sets itself, naming the argument to use instead."""
    own = sorted(set(pipe_kwargs or ()) & set(OWN_PIPE_KWARGS))
    if own:
        hints = ", ".join(f"{OWN_PIPE_KWARGS[k]} instead of {k}" for k in own if OWN_PIPE_KWARGS[k])
        raise (error or InvalidSettingError)(
            f"{', '.join(own)} cannot be passed through to the pipeline: {who} set "
            f"{'it' if len(own) == 1 else 'them'} for every generation" + (f"; use {hints}" if hints else ""))


def diffusers_names(fn):
    """Let ``fn`` (a fluxlab function with a ``steps`` parameter) also take diffusers' ``num_inference_steps``;
    both given and different is refused, naming both."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def accepting(*args, **kwargs):
        for theirs, ours in DIFFUSERS_NAMES.items():
            if theirs not in kwargs:
                continue
            value = kwargs.pop(theirs)
            try:
                given = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                given = kwargs  # a call fn itself will refuse; let it say why
            if ours in given and given[ours] != value:
                raise InvalidSettingError(f"{ours}={given[ours]!r} and {theirs}={value!r} disagree; they are one "
                                          f"setting (diffusers calls it {theirs}): pass one of them")
            if ours not in given:
                kwargs[ours] = value
        return fn(*args, **kwargs)

    return accepting
