"""One protocol for every result object (``Result``: repr, ``_repr_html_``, ``to_dataframe()``, ``to_markdown()``,
``figure()``, ``save()`` to JSON with provenance) and the one table renderer (``markdown_table``, ``html_table``).
"""

from __future__ import annotations

import dataclasses
import html as _html
import itertools
import json
import math
import re
import sys
from pathlib import Path

from .util import jsonable, provenance, torch_dtype_name, write_result_file


# -- the one table renderer -----------------------------------------------------------------------------------------


def format_cell(value, spec: str = ".4g") -> str:
    """A table cell: floats by ``spec`` (4 significant digits; "-" for NaN), None blank, sequences joined, tensors by
    shape."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return format(value, spec)
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # a tensor or array: never its numbers
        return f"{torch_dtype_name(value.dtype)}[{', '.join(map(str, shape))}]"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(format_cell(v, spec) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_cell(v, spec)}" for k, v in value.items())
    return str(value)


def markdown_table(rows: list[dict], columns=None) -> str:
    """A GitHub markdown table of ``rows`` (dicts; missing keys blank)."""
    keys = list(columns or dict.fromkeys(key for row in rows for key in row))
    if not keys:
        return "(no rows)\n"

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [line(keys), line(["---"] * len(keys))]
    out += [line(format_cell(row.get(k)) for k in keys) for row in rows]
    return "\n".join(out) + "\n"


def html_table(rows: list[dict], *, cell_style=None) -> str:
    """The same table as HTML, for notebooks; ``cell_style(column, text)`` may return CSS for a cell."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    if not keys:
        return "<p>(no rows)</p>"
    return _html_table(keys, [[format_cell(row.get(k)) for k in keys] for row in rows], cell_style=cell_style)


def _html_table(keys, body_rows, *, escape=_html.escape, cell_style=None) -> str:
    def cell(key, text):
        css = cell_style(key, text) if cell_style else ""
        return f'<td style="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>"

    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(cell(k, t) for k, t in zip(keys, row)) + "</tr>" for row in body_rows)
    return (f'<table style="border-collapse:collapse;font-size:90%"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _inline(text: str) -> str:
    """Markdown inline marks fluxlab's tables use (``code``, **bold**) as HTML, everything else escaped."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", _html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _block(line: str) -> str:
    return "table" if line.startswith("|") else "item" if line.startswith("- ") else "text" if line else "blank"


def markdown_to_html(markdown: str) -> str:
    """fluxlab's own markdown (paragraphs, ``- `` lists, ``|`` tables, code, bold) as HTML: a result's notebook view
    is its ``to_markdown()``, rendered once here rather than written twice."""
    blocks = []
    for kind, group in itertools.groupby((line.strip() for line in markdown.splitlines()), key=_block):
        lines = list(group)
        if kind == "table":  # escaped pipes stay inside their cell; the --- row goes
            rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip("|"))] for line in lines]
            rows = [row for row in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in row)]
            blocks.append(_html_table(rows[0], rows[1:], escape=_inline))
        elif kind == "item":
            blocks.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>")
        elif kind == "text":
            blocks.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(blocks)


# -- the protocol ---------------------------------------------------------------------------------------------------


def command_line() -> str:
    """How this process was started (the CLI's argv; a notebook's kernel says so)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("ipykernel_launcher.py"):
        return "a Jupyter kernel"
    return " ".join(argv) if argv else "python"


def model_of(pipe) -> dict | None:
    """What a result says about the model it came from: pipeline class, source, transformer dtype."""
    if pipe is None:
        return None
    transformer = getattr(pipe, "transformer", pipe)
    config = getattr(pipe, "config", None) or getattr(transformer, "config", None)
    source = getattr(config, "_name_or_path", None) if config is not None else None
    dtype = getattr(transformer, "dtype", None)
    return {"pipeline": type(pipe).__name__, "source": str(source) if source else None,
            "dtype": torch_dtype_name(dtype) if dtype is not None else None}


class Result:
    """Mixin of every result object. Subclasses supply ``table_rows()`` and ``headline()``; they may override any
    rendering, ``figure()`` (default: none fits) and ``as_dict()`` (default: headline and rows)."""

    #: where the result came from (``model_of(pipe)``); set by whatever made it, saved by ``save()``
    model: dict | None = None

    def table_rows(self) -> list[dict]:
        raise NotImplementedError

    def headline(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.headline()})"

    def to_markdown(self) -> str:
        return f"{self.headline()}\n\n{markdown_table(self.table_rows())}"

    def to_html(self) -> str:
        return markdown_to_html(self.to_markdown())

    def _repr_html_(self) -> str:
        """The notebook view: the table (``figure()`` draws the picture, where one fits, when asked)."""
        return self.to_html()

    def to_dataframe(self):
        """The table as a pandas DataFrame (pandas is optional: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(f"{type(self).__name__}.to_dataframe() needs pandas: pip install pandas "
                              "(to_markdown() gives the same table without it)") from exc
        return pd.DataFrame(self.table_rows())

    @property
    def has_figure(self) -> bool:
        return type(self).figure is not Result.figure

    def figure(self, path=None):
        raise NotImplementedError(f"{type(self).__name__} has no picture; to_markdown() and to_dataframe() show it")

    def as_dict(self) -> dict:
        return {"headline": self.headline(), "rows": self.table_rows()}

    def provenance(self, command: str | None = None) -> dict:
        """platform, versions, date and git revision (``fluxlab.util.provenance``), the model and the command."""
        return {**provenance(), "model": self.model, "command": command or command_line()}

    def to_json_dict(self, command: str | None = None) -> dict:
        """What ``save`` writes: ``result_type``, the result's own fields, and ``provenance``."""
        return jsonable({"result_type": type(self).__name__, **self.as_dict(), "provenance": self.provenance(command)})

    def save(self, path, *, command: str | None = None) -> Path:
        """JSON with the result and its provenance, written atomically; returns the path."""
        return write_result_file(path, json.dumps(self.to_json_dict(command), indent=2, allow_nan=False) + "\n")


class ResultList(list, Result):
    """A list of result rows (``fluxlab.backends()``) with the protocol; ``row_dict(item)`` makes its table rows."""

    def __init__(self, items=(), headline: str = ""):
        super().__init__(items)
        self._headline = headline

    def headline(self) -> str:
        return self._headline or f"{len(self)} rows"

    def table_rows(self) -> list[dict]:
        return [dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item) for item in self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.headline()})"
