"""The whole ``fluxlab compare`` run as a function: synthetic sweep, tiny FLUX.2 captures, replays, images.
Returns the reports and whether any backend failed; the CLI turns that into an exit code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..dispatch import default_backend
from ..platform import current_platform
from .attention import compare_attention, parse_dtype
from .document import Section, write_document
from .inputs import CPU_INPUTS, FLUX_INPUTS, SMOKE_INPUTS, default_inputs
from ..util import atomic_write, git_revision, torch_dtype_name, versions
from .records import save_records

INPUT_SETS = {"default": None, "cpu": CPU_INPUTS, "flux": FLUX_INPUTS, "smoke": SMOKE_INPUTS, "none": ()}
from ..defaults import DEFAULT_MODEL, DEFAULT_PROMPT  # the embedded model, and a caption it draws


@dataclasses.dataclass
class CompareRun:
    report_path: Path
    reports: dict  # section title -> ComparisonReport / ImageComparison
    notes: list[str]  # parts that were skipped, and why
    failed: bool  # some backend got "fail" somewhere

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def run_compare(out_dir="fluxlab-compare", *, backends=None, inputs: str = "default", dtypes=("bf16",),
                seeds=(0,), model: str = DEFAULT_MODEL, variant: str | None = None, images: bool = True, records=(),
                fmt: str = "md", steps: int = 4, prompt: str = DEFAULT_PROMPT, seed: int = 0,
                save_captures: bool = False, progress: bool = True, command: str | None = None,
                device=None, offload=None, log=print) -> CompareRun:
    """Run every part of the comparison that this machine and this fluxlab can, and write the report
    (``report.md``/``.html``, PNGs, and ``results.json`` with every row). ``offload``: as ``load_flux2``'s."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = [parse_dtype(d) for d in dtypes]
    sections, reports, notes = [], {}, []

    if inputs not in INPUT_SETS:
        raise ValueError(f"unknown input set {inputs!r}; choose one of {sorted(INPUT_SETS)}")
    specs = default_inputs() if inputs == "default" else INPUT_SETS[inputs]
    if specs:
        log(f"synthetic inputs: {len(specs)} shapes x {len(dtypes)} dtypes x {len(seeds)} seeds")
        report = compare_attention(specs, backends, dtypes=dtypes, seeds=seeds, progress=progress, device=device)
        _add_attention_section(sections, reports, report, out, "Synthetic FLUX-shaped inputs", "synthetic",
                               "q/k/v drawn from three distributions (normal, outlier channels, peaky attention); "
                               "see fluxlab.compare.inputs.DISTRIBUTIONS.")

    pipe = None
    if model != "none":
        from ..models.capture import capture
        from ..models.load import load_flux2

        pipe = load_flux2(model, flux2_variant=variant, dtype=dtypes[0], device=device, offload=offload, height=64,
                          width=64)
        variant = "klein" if type(pipe).__name__.startswith("Flux2Klein") else "dev"
        last = max(steps - 1, 0)
        with capture(pipe, steps=sorted({0, last})) as captured:
            pipe(prompt=prompt, height=64, width=64, num_inference_steps=steps, output_type="np",
                 generator=_generator(seed))
        captured = list(captured)
        log(f"captured {len(captured)} attention calls from the {model} FLUX.2 [{variant}] model")
        report = compare_attention(captured, backends, progress=progress, device=device)
        _add_attention_section(sections, reports, report, out, f"Captured from the {model} FLUX.2 [{variant}] "
                               "model", "captured", f"Attention inputs of steps {sorted({0, last})} of a "
                               f"{steps}-step 64x64 generation in {torch_dtype_name(dtypes[0])}, "
                               f"prompt {prompt!r}, seed {seed}; the row 'recorded:...' judges the output the "
                               "model's own backend produced.")
        if save_captures:
            save_records(out / "records", captured, results=report, extra={"command": command})
            notes.append(f"captured records saved to {out / 'records'}")

    for path in records:
        from .replay import replay

        report = replay(path, backends, progress=progress, device=device)
        where = report.meta["recorded"].get("platform_description") or "elsewhere"
        _add_attention_section(sections, reports, report, out, f"Replayed records from {where} ({path})",
                               f"replay{len([t for t in reports if t.startswith('Replayed')])}",
                               "Outputs recorded on that machine are rows named 'recorded:<backend>@<machine>'; "
                               "rel_l2_vs_recorded compares this machine's backends with them.")

    if images and pipe is not None:
        from .images import compare_images

        image_backends = _image_backends(backends)
        log(f"images: {', '.join(image_backends)}")
        try:
            result = compare_images(pipe, image_backends, prompt=prompt, seed=seed, steps=steps)
        except (RuntimeError, ImportError) as exc:  # every backend failed, or no scikit-image here
            notes.append(f"image comparison failed: {exc}")
        else:
            result.figure(path=out / "images.png")
            reports["images"] = result
            sections.append(Section("Images from identical noise", "PSNR and SSIM from scikit-image against the "
                                    f"reference backend ({result.reference}); latent drift = relative L2 of the "
                                    "latents after each step.", result, ["images.png"]))

    if notes:
        sections.append(Section("Notes", "\n".join(f"- {n}" for n in notes)))
    platform = current_platform()
    found = versions()
    git = git_revision()
    meta = {"platform": platform.describe(), "torch": found.get("torch"), "diffusers": found.get("diffusers"),
            "fluxlab": found.get("fluxlab"),
            "git": git["commit"] if git else None,
            "git_local_changes": git["dirty"] if git else None,
            "command": command}
    path = write_document(out, sections, meta, fmt)
    _write_results(out / "results.json", reports, meta)
    failed = any(getattr(r, "failed", False) for r in reports.values())
    return CompareRun(path, reports, notes, failed)


def _write_results(path: Path, reports: dict, meta: dict) -> None:
    """Every row of every section as plain JSON, for numbers to be committed and compared later."""
    import json

    from .records import _jsonable

    data = {"meta": meta, "platform": current_platform().as_dict(), "sections": {}}
    for title, report in reports.items():
        rows = [row.as_dict() for row in report.rows]
        data["sections"][title] = {"verdicts": getattr(report, "verdicts", None), "rows": rows,
                                   "settings": getattr(report, "settings", None) or getattr(report, "meta", None)}
    atomic_write(path, json.dumps(_jsonable(data), indent=1))


def _generator(seed):
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)


def _image_backends(backends) -> list[str]:
    """The machine's default backend first (the reference image), then the others that run here."""
    from .specs import parse_backends

    specs = [s.label for s in parse_backends(backends, current_platform())]
    first = default_backend() or "sdpa"
    return [first] + [s for s in specs if s != first]


def _add_attention_section(sections, reports, report, out: Path, title: str, stem: str, text: str):
    from .plots import plot_error_maps, save_figure

    reports[title] = report
    pictures = []
    try:
        fig = plot_error_maps(report)
        save_figure(fig, out / f"error_maps_{stem}.png", dpi=100)
        pictures.append(f"error_maps_{stem}.png")
    except ValueError as exc:  # nothing ran: the tables say why
        text += f" (no error maps: {exc})"
    sections.append(Section(title, text, report, pictures))
