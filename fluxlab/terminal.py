"""Progress where someone watches (a terminal, a notebook) and log lines where nobody does (pipes, CI logs).

``progress_bar(...)`` is a tqdm bar on a terminal or in a notebook; elsewhere a ``LogBar`` with the same small
interface that writes whole lines (no carriage returns): one when a stage starts, at every tenth of the way, and
when it ends. ``quiet_library_bars()`` does the same for diffusers' and transformers' own loading bars.
"""

from __future__ import annotations

import sys
import time


def in_notebook() -> bool:
    """A Jupyter kernel (ipywidgets bars) rather than a terminal IPython or plain Python."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


def interactive(stream=None) -> bool:
    """Whether a person watches ``stream`` (default stderr) redraw: a terminal, or a notebook."""
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        tty = False
    return tty or in_notebook()


class LogBar:
    """tqdm's interface (update, set_postfix_str, set_description, close, total, n) as plain log lines."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", file=None, **_ignored):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.file = file
        self.postfix = ""
        self._next_tenth = 1
        self._start = time.perf_counter()
        self._closed = False

    def _line(self, what: str) -> None:
        stream = self.file or sys.stderr
        label = f"{self.desc}: " if self.desc else ""
        stage = f" [{self.postfix}]" if self.postfix else ""
        print(f"{label}{what}{stage} ({time.perf_counter() - self._start:.1f} s)", file=stream, flush=True)

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n == n:  # the first step: the stage is under way
            self._line(self._count())
        elif self.total:
            tenth = self.n * 10 // self.total
            if tenth >= self._next_tenth:
                self._next_tenth = tenth + 1
                self._line(self._count())
        elif self.n & (self.n - 1) == 0:  # no total: 1, 2, 4, 8, ... lines, never a flood
            self._line(self._count())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        if text != self.postfix:
            self.postfix = text
            self._line(self._count())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed and self.n:
            self._closed = True
            self._line(f"done, {self._count()}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()


def progress_bar(iterable=None, total=None, desc: str = "", unit: str = "it", disable: bool = False, file=None,
                 **kwargs):
    """A tqdm bar where someone watches it redraw (``interactive()``), else a ``LogBar``; nothing if ``disable``."""
    if disable or interactive(file):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, disable=disable, **kwargs)
    return LogBar(iterable, total=total, desc=desc, unit=unit, file=file)


def quiet_library_bars() -> None:
    """No diffusers/transformers/huggingface_hub loading bars where nobody watches them redraw."""
    if interactive():
        return
    for module, name in (("diffusers.utils.logging", "disable_progress_bar"),
                         ("transformers.utils.logging", "disable_progress_bar"),
                         ("huggingface_hub.utils", "disable_progress_bars")):
        try:
            getattr(__import__(module, fromlist=[name]), name)()
        except (ImportError, AttributeError):
            pass
