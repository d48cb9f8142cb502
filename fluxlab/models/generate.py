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
import signal
import sys
import threading
import time
from pathlib import Path

from ..util import atomic_write, torch_dtype_name, utc_now
from .errors import GenerationInterrupted, InvalidSizeError
from .limits import DEFAULT_MULTIPLE, check_pipe_generation, side_problem
from .names import diffusers_names

AUTO = "auto"  # backend name meaning "fluxlab's automatic choice"
# FLUX.2 latents are 1/8 of the image (VAE) and packed in 2x2 patches: both sides must be multiples of 16.
SIZE_MULTIPLE = DEFAULT_MULTIPLE


def parse_size(text: str | int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
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


def check_size(width: int, height: int, multiple: int = SIZE_MULTIPLE) -> None:
    """Raise InvalidSizeError naming the nearest valid sizes if a side is not a positive multiple of ``multiple``."""
    for side, value in (("width", width), ("height", height)):
        problem = side_problem(value, side, multiple, force=True)  # the shape only; bounds: limits.check_generation
        if problem:
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
    found = {}
    for name in backends:
        if name != AUTO:
            reasons = get_backend(BackendChoice.parse(name).name).platform_reasons(platform)
            if reasons:
                found[name] = reasons
    return found


# -- files ---------------------------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """``fluxlab.util.atomic_write`` into ``path``'s folder, created if missing (a reader never sees half a file;
    the file gets the umask's mode, 0644 under 022)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def write_png(path: Path, image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def write_json(path: Path, payload: dict) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def folder_name(backend: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", backend)


def environment() -> dict:
    """Machine, versions and git revision (``fluxlab.util.provenance``, less its date), for manifests."""
    import torch

    from ..util import provenance

    info = provenance()
    info.pop("date")
    return {**info, "host": {"machine": host.machine(), "cpu_count": os.cpu_count(),
                             "torch_threads": torch.get_num_threads()}}


# -- generation ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _ctrl_c_stops_after_step(stop: dict):
    """In the main thread, the first Ctrl-C asks the generation to stop after the current denoising step (so the
    output can be written whole, marked interrupted); a second Ctrl-C interrupts at once, the writing included.
    Elsewhere (other threads, a handler someone else installed) Ctrl-C keeps its behaviour and nothing half-written
    is left either; a process started with SIGINT ignored (``nohup``, ``cmd &`` in a script) keeps ignoring it, as
    Python itself does: fluxlab never turns Ctrl-C back on."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def request_stop(_signum, _frame):
        stop["requested"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nfluxlab: stopping after the current step (Ctrl-C again to stop at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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

    With ``out_dir``, writes ``out_dir/<backend>/image.png`` and ``manifest.json`` (atomically). Each manifest
    records which backend actually served the attention calls (``attention_calls``), seed, steps, size, timings,
    platform and versions. The pipeline's backend is restored afterwards.

    Requests beyond ``fluxlab.models.limits.BOUNDS`` (size, steps, ``max_sequence_length``) are refused before any
    work unless ``force=True``; malformed ones (a side not a multiple of the model's 16, steps 0, seed -1, an empty
    prompt) always.
    ``on_step(backend, step_index)`` runs after every denoising step. Ctrl-C (or a KeyboardInterrupt raised by
    ``on_step``) stops after the current step: that backend's image is written as ``image.partial.png`` with
    ``"interrupted": true`` and ``completed_steps`` in its manifest, and ``GenerationInterrupted`` is raised with
    the results so far.
    """
    import torch
    from ..terminal import progress_bar as tqdm  # a bar on a terminal or in a notebook, log lines in pipes

    from ..registry import get_backend
    from .attach import set_backend, state_of
    from .capture import capture
    from .memory import PeakMemory
    from .offload import execution_device

    check_pipe_generation(pipe, prompt=prompt, width=width, height=height, steps=steps, seed=seed, force=force,
                          max_sequence_length=pipe_kwargs.get("max_sequence_length", 512),
                          guidance_scale=guidance_scale)
    steps, seed, width, height = int(steps), int(seed), int(width), int(height)  # numpy integers: plain in manifests
    backends = parse_backends(backends)
    state = state_of(pipe)
    previous = state.backend
    env = environment()
    device = execution_device(pipe)  # an offloaded pipeline's weights rest on the CPU but run here
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = []
    # One bar for the whole run instead of diffusers' per-call bar; the pipeline's own setting comes back after.
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**bar_config, "disable": True})
    bar = tqdm(total=len(backends) * steps, unit="step", desc="fluxlab generate", disable=not progress,
               file=sys.stderr, leave=False)
    stop = {"requested": False}
    try:
        for name in backends:
            set_backend(pipe, None if name == AUTO else name)
            bar.set_postfix_str(name)
            step_ends = []

            def step_done(pipe_, i, _t, _tensors, name=name, step_ends=step_ends):
                sync()  # so the step's time is the GPU's, not the launch queue's
                step_ends.append(time.perf_counter())
                bar.update(1)
                if on_step is not None:
                    try:
                        on_step(name, i)
                    except KeyboardInterrupt:
                        stop["requested"] = True
                if stop["requested"]:
                    pipe_._interrupt = True  # diffusers skips the remaining steps, then decodes what there is
                return {}

            kwargs = dict(prompt=prompt, height=height, width=width, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(seed), output_type="pil",
                          callback_on_step_end=step_done, **pipe_kwargs)
            if guidance_scale is not None:
                kwargs["guidance_scale"] = guidance_scale
            # Capturing to "meta" keeps no tensors, only which backend served each call.
            try:
                with _ctrl_c_stops_after_step(stop), capture(pipe, to="meta", lse=False) as cap, \
                        PeakMemory(device) as peak:
                    sync()
                    start = time.perf_counter()
                    image = pipe(**kwargs).images[0]
                    sync()
                    total = time.perf_counter() - start
            except KeyboardInterrupt as exc:  # mid-step (a second Ctrl-C, or no handler of ours): nothing written
                where = (f"again before {name}'s partial image was decoded" if stop["requested"] else
                         f"during step {len(step_ends) + 1} of {steps} on {name}")
                raise GenerationInterrupted(f"interrupted {where}; nothing was written for it", results, name,
                                            len(step_ends), steps) from exc
            completed = len(step_ends)
            interrupted = completed < steps
            steps_s = [b - a for a, b in zip([start, *step_ends], step_ends)]
            ran = cap.backends_used()
            manifest = {
                "backend": name,
                "attention_calls": ran,
                "backend_versions": {b: get_backend(b).version for b in ran},
                "prompt": prompt, "seed": seed, "steps": steps, "size": {"width": width, "height": height},
                "guidance_scale": guidance_scale,
                "model": {"pipeline": type(pipe).__name__, "dtype": torch_dtype_name(pipe.transformer.dtype),
                          "device": str(device), **_offload_info(pipe), **(model_info or {})},
                "memory": peak.as_dict(),
                "timings": {"generate_s": round(total, 4), "steps_s": [round(s, 4) for s in steps_s],
                            "note": "pipeline call incl. prompt encoding and VAE decode; steps_s per denoising step"},
                **env,
                "created": utc_now(),
                "image": "image.partial.png" if interrupted else "image.png",
                "interrupted": interrupted, "completed_steps": completed,
            }
            if out_dir is not None:
                folder = Path(out_dir) / folder_name(name)
                written = []
                try:
                    manifest["image_sha256"] = write_png(folder / manifest["image"], image)
                    written.append(folder / manifest["image"])
                    write_json(folder / "manifest.json", manifest)
                except KeyboardInterrupt as exc:  # Ctrl-C (again) while writing: stop at once, leave nothing of it
                    for path in written:
                        path.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only if empty
                    raise GenerationInterrupted(f"interrupted while writing {name}'s image; nothing was written for "
                                                "it", results, name, completed, steps) from exc
            results.append(Generated(name, image, manifest, peak.bytes))
            if stop["requested"]:
                left = backends[backends.index(name) + 1:]
                raise GenerationInterrupted(
                    (f"interrupted after step {completed} of {steps} on {name} (its image is partial, marked "
                     "\"interrupted\": true in its manifest)" if interrupted else f"interrupted after {name}")
                    + (f"; not run: {', '.join(left)}" if left else ""), results, name, completed, steps)
    finally:
        bar.close()
        pipe._progress_bar_config = bar_config
        state.backend = previous
    return results


def _offload_info(pipe) -> dict:
    plan = getattr(pipe, "fluxlab_offload", None)
    return {"offload": plan.as_dict()} if plan is not None else {}


def image_grid(images, labels, *, scale: int = 3, pad: int = 4, label_height: int = 14):
    """Side by side, each scaled up ``scale``x (nearest: no smoothing hides differences), labelled below."""
    from PIL import Image, ImageDraw

    tiles = [im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    width = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
    height = max(t.height for t in tiles) + label_height + 2 * pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    x = pad
    for tile, label in zip(tiles, labels):
        grid.paste(tile, (x, pad))
        draw.text((x, pad + tile.height + 2), label, fill="black")
        x += tile.width + pad
    return grid
