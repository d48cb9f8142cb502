"""Writes a comparison report to disk: Markdown or HTML with the tables, the verdict rule and the PNGs."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

from ..util import atomic_write, utc_now
from .tolerances import RULE_TEXT


@dataclasses.dataclass
class Section:
    title: str
    text: str = ""  # Markdown paragraph(s) introducing the section
    report: object | None = None  # a ComparisonReport or ImageComparison
    pictures: list[str] = dataclasses.field(default_factory=list)  # PNG file names in the output folder


def _header(meta: dict) -> list[tuple[str, str]]:
    return [(key, str(value)) for key, value in meta.items() if value not in (None, "")]


def write_document(out_dir, sections: list[Section], meta: dict, fmt: str = "md") -> Path:
    """Write ``report.md`` (or ``report.html``) into ``out_dir``; returns its path."""
    if fmt not in ("md", "html"):  # checked before anything is created
        raise ValueError(f"unknown report format {fmt!r}: use 'md' or 'html'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"written (UTC)": utc_now(), **meta}
    path = out / f"report.{fmt}"
    atomic_write(path, _html(sections, meta) if fmt == "html" else _markdown(sections, meta))
    return path


def _markdown(sections, meta) -> str:
    parts = ["# fluxlab compare", ""]
    parts += [f"- **{key}**: {value}" for key, value in _header(meta)]
    for section in sections:
        parts += ["", f"## {section.title}", ""]
        if section.text:
            parts += [section.text, ""]
        if section.report is not None:
            parts.append(section.report.to_markdown())
        parts += [f"![{name}]({name})" for name in section.pictures]
    parts += ["", "## Verdict rule", "", RULE_TEXT]
    return "\n".join(parts) + "\n"


def _html(sections, meta) -> str:
    body = ["<h1>fluxlab compare</h1>", "<ul>"]
    body += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in _header(meta)]
    body.append("</ul>")
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
