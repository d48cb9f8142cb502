"""The whole ``fluxlab compare`` run as a function: synthetic sweep, tiny FLUX.2 captures, replays, images, written
as one report (Markdown or HTML with the tables, the verdict rule and the PNGs). The CLI turns it into an exit code.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import torch

from ..defaults import DEFAULT_MODEL, DEFAULT_PROMPT  # the embedded model, and a caption it draws
from ..dispatch import default_backend
from ..platform import current_platform
from ..util import atomic_write, git_revision, parse_dtype, torch_dtype_name, utc_now, versions
from .attention import compare_attention, replay
from .inputs import CPU_INPUTS, FLUX_INPUTS, SMOKE_INPUTS, default_inputs
from .records import _jsonable, save_records
from .specs import parse_backends
from .tolerances import RULE_TEXT

INPUT_SETS = {"default": None, "cpu": CPU_INPUTS, "flux": FLUX_INPUTS, "smoke": SMOKE_INPUTS, "none": ()}


@dataclasses.dataclass
class CompareRun:
    report_path: Path
    reports: dict  # section title -> ComparisonReport / ImageComparison
    notes: list[str]  # parts that were skipped, and why
    failed: bool  # some backend got "fail" somewhere

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclasses.dataclass
class Section:
    title: str
    text: str = ""  # Markdown paragraph(s) introducing the section
    report: object | None = None  # a ComparisonReport or ImageComparison
    pictures: list[str] = dataclasses.field(default_factory=list)  # PNG file names in the output folder


def run_compare(out_dir="fluxlab-compare", *, backends=None, inputs: str = "default", dtypes=("bf16",),
                seeds=(0,), model: str = DEFAULT_MODEL, variant: str | None = None, images: bool = True, records=(),
                fmt: str = "md", steps: int = 4, prompt: str = DEFAULT_PROMPT, seed: int = 0,
                save_captures: bool = False, progress: bool = True, command: str | None = None,
                device=None, offload=None, log=print) -> CompareRun:
    """Run every part of the comparison that this machine and this fluxlab can, and write the report
    (``report.md``/``.html``, PNGs, and ``results.json`` with every row). ``offload``: as ``load_flux2``'s."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = [parse_dtype(d) for d in dtypes]
    sections, reports, notes = [], {}, []

    def add_attention(report, title: str, stem: str, text: str):
        from .plots import plot_error_maps, save_figure

        reports[title] = report
        pictures = []
        try:
            save_figure(plot_error_maps(report), out / f"error_maps_{stem}.png", dpi=100)
            pictures.append(f"error_maps_{stem}.png")
        except ValueError as exc:  # nothing ran: the tables say why
            text += f" (no error maps: {exc})"
        sections.append(Section(title, text, report, pictures))

    if inputs not in INPUT_SETS:
        raise ValueError(f"unknown input set {inputs!r}; choose one of {sorted(INPUT_SETS)}")
    specs = default_inputs() if inputs == "default" else INPUT_SETS[inputs]
    if specs:
        log(f"synthetic inputs: {len(specs)} shapes x {len(dtypes)} dtypes x {len(seeds)} seeds")
        report = compare_attention(specs, backends, dtypes=dtypes, seeds=seeds, progress=progress, device=device)
        add_attention(report, "Synthetic FLUX-shaped inputs", "synthetic", "q/k/v drawn from three distributions "
                      "(normal, outlier channels, peaky attention); see fluxlab.compare.inputs.DISTRIBUTIONS.")

    pipe = None
    if model != "none":
        from ..models.capture import capture
        from ..models.load import load_flux2

        pipe = load_flux2(model, flux2_variant=variant, dtype=dtypes[0], device=device, offload=offload, height=64,
                          width=64)
        variant = "klein" if type(pipe).__name__.startswith("Flux2Klein") else "dev"
        captured_steps = sorted({0, max(steps - 1, 0)})
        with capture(pipe, steps=captured_steps) as captured:
            pipe(prompt=prompt, height=64, width=64, num_inference_steps=steps, output_type="np",
                 generator=torch.Generator(device="cpu").manual_seed(seed))
        captured = list(captured)
        log(f"captured {len(captured)} attention calls from the {model} FLUX.2 [{variant}] model")
        report = compare_attention(captured, backends, progress=progress, device=device)
        add_attention(report, f"Captured from the {model} FLUX.2 [{variant}] model", "captured",
                      f"Attention inputs of steps {captured_steps} of a {steps}-step 64x64 generation in "
                      f"{torch_dtype_name(dtypes[0])}, prompt {prompt!r}, seed {seed}; the row 'recorded:...' judges "
                      "the output the model's own backend produced.")
        if save_captures:
            save_records(out / "records", captured, results=report, extra={"command": command})
            notes.append(f"captured records saved to {out / 'records'}")

    for number, path in enumerate(records):
        report = replay(path, backends, progress=progress, device=device)
        where = report.meta["recorded"].get("platform_description") or "elsewhere"
        add_attention(report, f"Replayed records from {where} ({path})", f"replay{number}",
                      "Outputs recorded on that machine are rows named 'recorded:<backend>@<machine>'; "
                      "rel_l2_vs_recorded compares this machine's backends with them.")

    if images and pipe is not None:
        from .images import compare_images

        first = default_backend() or "sdpa"  # the machine's default backend: the reference image
        image_backends = [first] + [s.label for s in parse_backends(backends, current_platform()) if s.label != first]
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
    found, git = versions(), git_revision()
    meta = {"platform": current_platform().describe(), "torch": found.get("torch"), "diffusers": found.get("diffusers"),
            "fluxlab": found.get("fluxlab"), "git": git["commit"] if git else None,
            "git_local_changes": git["dirty"] if git else None, "command": command}
    path = write_document(out, sections, meta, fmt)
    _write_results(out / "results.json", reports, meta)
    return CompareRun(path, reports, notes, any(getattr(r, "failed", False) for r in reports.values()))


def _write_results(path: Path, reports: dict, meta: dict) -> None:
    """Every row of every section as plain JSON, for numbers to be committed and compared later."""
    data = {"meta": meta, "platform": current_platform().as_dict(), "sections": {}}
    for title, report in reports.items():
        data["sections"][title] = {"verdicts": getattr(report, "verdicts", None),
                                   "rows": [row.as_dict() for row in report.rows],
                                   "settings": getattr(report, "settings", None) or getattr(report, "meta", None)}
    atomic_write(path, json.dumps(_jsonable(data), indent=1))


def write_document(out_dir, sections: list[Section], meta: dict, fmt: str = "md") -> Path:
    """Write ``report.md`` (or ``report.html``) into ``out_dir``; returns its path."""
    if fmt not in ("md", "html"):  # checked before anything is created
        raise ValueError(f"unknown report format {fmt!r}: use 'md' or 'html'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = [(key, str(value)) for key, value in {"written (UTC)": utc_now(), **meta}.items()
              if value not in (None, "")]
    path = out / f"report.{fmt}"
    atomic_write(path, _html(sections, header) if fmt == "html" else _markdown(sections, header))
    return path


def _markdown(sections, header) -> str:
    parts = ["# fluxlab compare", ""] + [f"- **{key}**: {value}" for key, value in header]
    for section in sections:
        parts += ["", f"## {section.title}", ""] + ([section.text, ""] if section.text else [])
        if section.report is not None:
            parts.append(section.report.to_markdown())
        parts += [f"![{name}]({name})" for name in section.pictures]
    return "\n".join(parts + ["", "## Verdict rule", "", RULE_TEXT]) + "\n"


def _html(sections, header) -> str:
    body = ["<h1>fluxlab compare</h1>", "<ul>"] + [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                                    for k, v in header] + ["</ul>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            body.append(f"<p>{html.escape(section.text)}</p>")
        if section.report is not None:
            body.append(section.report.to_html())
        body += [f'<p><img src="{html.escape(name)}" style="max-width:100%"/></p>' for name in section.pictures]
    body += ["<h2>Verdict rule</h2>", f"<pre>{html.escape(RULE_TEXT)}</pre>"]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fluxlab compare</title>"
            "<style>body{font-family:sans-serif;margin:2em} td,th{border:1px solid #ccc;padding:2px 6px}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>\n")
