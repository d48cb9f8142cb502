"""Progress where someone watches (a terminal, a notebook: tqdm bars) and whole log lines where nobody does (pipes,
CI logs): one when a stage starts, at every tenth of the way, and at the end; no carriage returns.
"""

from __future__ import annotations

import sys
import time


def interactive(stream=None) -> bool:
    """Whether a person watches ``stream`` (default stderr) redraw: a terminal, or a Jupyter kernel's output."""
    try:
        if (sys.stderr if stream is None else stream).isatty():
            return True
    except (AttributeError, ValueError):  # closed or replaced streams
        pass
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


class LogBar:
    """tqdm's interface (update, set_postfix_str, close, total, n, iteration, ``with``) as plain log lines."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", file=None):
        self.iterable, self.desc, self.unit, self.file = iterable, desc, unit, file
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n, self.postfix, self._next_tenth, self._closed = 0, "", 1, False
        self._start = time.perf_counter()

    def _line(self, what: str) -> None:
        label = f"{self.desc}: " if self.desc else ""
        stage = f" [{self.postfix}]" if self.postfix else ""
        print(f"{label}{what}{stage} ({time.perf_counter() - self._start:.1f} s)", file=self.file or sys.stderr,
              flush=True)

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = self.n * 10 // self.total if self.total else 0
        # the first step (the stage is under way), each tenth, or without a total 1, 2, 4, 8, ...: never a flood
        if self.n == n or (self.total and tenth >= self._next_tenth) or (not self.total and self.n & (self.n - 1) == 0):
            self._next_tenth = max(self._next_tenth, tenth + 1)
            self._line(self._count())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        if text != self.postfix:
            self.postfix = text
            self._line(self._count())

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
