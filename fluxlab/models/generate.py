"""Generate the same image once per attention backend: PNGs and a manifest each, written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform as host
import re
import sys
from pathlib import Path

from ..errors import GenerationInterrupted, InvalidSizeError
from ..util import torch_dtype_name, utc_now
from ..util import write_result_file as write_atomic  # the folder created; a failure names the path
from .limits import DEFAULT_MULTIPLE, check_pipe_generation, diffusers_names, side_problem

AUTO = "auto"  # backend name meaning "fluxlab's automatic choice"


def parse_size(text: str | int, multiple: int = DEFAULT_MULTIPLE) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"64x96"`` -> width 64, height 96. Raises InvalidSizeError with the nearest sizes."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        width, height = int(parts[0]), int(parts[-1])
    except ValueError:
        raise InvalidSizeError(f"size {text!r} must be one number (square) or WIDTHxHEIGHT, e.g. 64 or 64x96") from None
    check_size(width, height, multiple)
    return width, height


def check_size(width: int, height: int, multiple: int = DEFAULT_MULTIPLE) -> None:
    """Raise InvalidSizeError naming the nearest valid sizes if a side is not a positive multiple of ``multiple``."""
    problem = side_problem(width, "width", multiple, force=True) or side_problem(height, "height", multiple, force=True)
    if problem:  # the shape only; the bounds: limits.check_generation
        raise InvalidSizeError(problem)


def parse_backends(text: str) -> list[str]:
    """``"sdpa,reference"`` -> canonical names; ``auto`` means automatic choice. Unknown names raise."""
    from ..dispatch import BackendChoice

    names = [n.strip() for n in text.split(",") if n.strip()] if isinstance(text, str) else list(text)
    if not names:
        raise ValueError("no backend given; e.g. --backend sdpa,reference (or 'auto')")
    return [AUTO if n == AUTO else str(BackendChoice.parse(n)) for n in names]


def unavailable_reasons(backends: list[str], device) -> dict[str, list[str]]:
    """Backends that cannot run on ``device``'s platform at all (missing package, wrong vendor), with reasons."""
    import torch

    from ..dispatch import BackendChoice
    from ..platform import platform_for_device
    from ..registry import get_backend

    platform = platform_for_device(torch.device(device or "cpu"))
    found = {name: get_backend(BackendChoice.parse(name).name).platform_reasons(platform)
             for name in backends if name != AUTO}
    return {name: reasons for name, reasons in found.items() if reasons}


def write_png(path: Path, image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def write_json(path: Path, payload: dict) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def environment() -> dict:
    """Machine, versions and git revision (``fluxlab.util.provenance``, less its date), for manifests."""
    import torch

    from ..util import provenance

    info = provenance()
    info.pop("date")
    return {**info, "host": {"machine": host.machine(), "cpu_count": os.cpu_count(),
                             "torch_threads": torch.get_num_threads()}}


@dataclasses.dataclass
class Generated:
    backend: str
    image: object  # PIL.Image
    manifest: dict
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated during the call; None on the CPU


@diffusers_names
def generate(pipe, backends, *, prompt: str, seed: int = 0, steps: int = 4, width: int = 64, height: int = 64,
             out_dir=None, guidance_scale: float | None = None, progress: bool = True, model_info: dict | None = None,
             force: bool = False, on_step=None, **pipe_kwargs) -> list[Generated]:
    """Run ``pipe`` once per backend with the same prompt and seed; returns image and manifest per backend.

    With ``out_dir``, writes ``out_dir/<backend>/image.png`` and ``manifest.json`` (atomically): which backend served
    the attention calls, seed, steps, size, timings, platform and versions. The pipeline's backend comes back after.
    Requests beyond ``fluxlab.models.limits.BOUNDS`` are refused before any work unless ``force=True``; malformed
    ones (a side not a multiple of the model's 16, steps 0, seed -1, an empty prompt) always. ``on_step(backend,
    step_index)`` runs after every step. Ctrl-C (or a KeyboardInterrupt from ``on_step``) stops after the current
    step: that image is written as ``image.partial.png`` (``"interrupted": true``, ``completed_steps`` in its
    manifest) and ``GenerationInterrupted`` is raised with the results so far.
    """
    from ..registry import get_backend
    from ..terminal import progress_bar as tqdm  # a bar on a terminal or in a notebook, log lines in pipes
    from .attach import state_of
    from .progress import StepControl
    from .runner import run

    check_pipe_generation(pipe, prompt=prompt, width=width, height=height, steps=steps, seed=seed, force=force,
                          max_sequence_length=pipe_kwargs.get("max_sequence_length", 512),
                          guidance_scale=guidance_scale)
    steps, seed, width, height = int(steps), int(seed), int(width), int(height)  # numpy integers: plain in manifests
    backends = parse_backends(backends)
    state_of(pipe)  # attached, or the error that says how
    env = environment()
    if guidance_scale is not None:
        pipe_kwargs["guidance_scale"] = guidance_scale
    # One bar for the whole run instead of diffusers' per-call bar.
    bar = tqdm(total=len(backends) * steps, unit="step", desc="fluxlab generate", disable=not progress,
               file=sys.stderr, leave=False)
    control = StepControl()  # Ctrl-C cancels after the current step
    control.listen(lambda done, _total: bar.update(done - bar.n) if done > bar.n else None)
    control.start(len(backends) * steps)
    plan = getattr(pipe, "fluxlab_offload", None)
    offload = {"offload": plan.as_dict()} if plan is not None else {}  # how the pipeline is offloaded, if it is
    results = []
    with contextlib.closing(bar):
        for index, name in enumerate(backends):
            bar.set_postfix_str(name)
            before = control.done
            try:  # capturing to "meta" keeps no tensors, only which backend served each call
                ran = run(pipe, backend=None if name == AUTO else name, prompt=prompt, seed=seed, steps=steps,
                          height=height, width=width, output="pil", control=control, partial=True, ctrl_c=True,
                          calls=True, on_step=None if on_step is None else (lambda i, n=name: on_step(n, i)),
                          **pipe_kwargs)
            except KeyboardInterrupt as exc:  # mid-step (a second Ctrl-C, or no handler of ours): nothing written
                where = (f"again before {name}'s partial image was decoded" if control.cancel_requested else
                         f"during step {control.done - before + 1} of {steps} on {name}")
                raise GenerationInterrupted(f"interrupted {where}; nothing was written for it", results, name,
                                            control.done - before, steps) from exc
            manifest = {
                "backend": name,
                "attention_calls": ran.calls,
                "backend_versions": {b: get_backend(b).version for b in ran.calls},
                "prompt": prompt, "seed": seed, "steps": steps, "size": {"width": width, "height": height},
                "guidance_scale": guidance_scale,
                "model": {"pipeline": type(pipe).__name__, "dtype": torch_dtype_name(pipe.transformer.dtype),
                          "device": str(ran.peak.device), **offload, **(model_info or {})},
                "memory": ran.peak.as_dict(),
                "timings": {"generate_s": round(ran.total_s, 4), "steps_s": [round(s, 4) for s in ran.steps_s],
                            "note": "pipeline call incl. prompt encoding and VAE decode; steps_s per denoising step"},
                **env,
                "created": utc_now(),
                "image": "image.partial.png" if ran.interrupted else "image.png",
                "interrupted": ran.interrupted, "completed_steps": ran.completed,
            }
            if out_dir is not None:
                _write(Path(out_dir) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name), ran.image, manifest, results)
            results.append(Generated(name, ran.image, manifest, ran.peak.bytes))
            if control.cancel_requested:
                left = backends[index + 1:]
                raise GenerationInterrupted(
                    (f"interrupted after step {ran.completed} of {steps} on {name} (its image is partial, marked "
                     "\"interrupted\": true in its manifest)" if ran.interrupted else f"interrupted after {name}")
                    + (f"; not run: {', '.join(left)}" if left else ""), results, name, ran.completed, steps)
    return results


def _write(folder: Path, image, manifest: dict, results: list) -> None:
    """The image and its manifest into ``folder``; a Ctrl-C (again) while writing stops at once, leaving nothing."""
    image_path, written = folder / manifest["image"], False
    try:
        manifest["image_sha256"] = write_png(image_path, image)
        written = True
        write_json(folder / "manifest.json", manifest)
    except KeyboardInterrupt as exc:
        if written:
            image_path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
        raise GenerationInterrupted(f"interrupted while writing {manifest['backend']}'s image; nothing was written "
                                    "for it", results, manifest["backend"], manifest["completed_steps"],
                                    manifest["steps"]) from exc


def image_grid(images, labels, *, scale: int = 3, pad: int = 4, label_height: int = 14):
    """Side by side, each scaled up ``scale``x (nearest: no smoothing hides differences), labelled below."""
    from PIL import Image, ImageDraw

    tiles = [im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    grid = Image.new("RGB", (sum(t.width for t in tiles) + pad * (len(tiles) + 1),
                             max(t.height for t in tiles) + label_height + 2 * pad), "white")
    draw = ImageDraw.Draw(grid)
    x = pad
    for tile, label in zip(tiles, labels):
        grid.paste(tile, (x, pad))
        draw.text((x, pad + tile.height + 2), label, fill="black")
        x += tile.width + pad
    return grid
