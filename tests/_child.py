"""A real ``fluxlab`` process for the Ctrl-C tests, started the same way whoever started the suite: SIGINT at its
default disposition (a suite started by ``nohup``, ``cmd &`` in a script or a service manager inherits it ignored,
and so would the child), its own process group (a Ctrl-C typed at the test run does not reach it), no stdin, and
stderr on a pseudo-terminal (progress bars are drawn for terminals). The test waits on what the child prints."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

# A safety cap only (a child that hangs fails the test instead of the suite): no test waits on this clock.
SAFETY_CAP_S = 900


class Child:
    def __init__(self, argv: list[str]):
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        # exec keeps an ignored signal ignored but resets a handler to the default: with a handler here while the
        # child starts, its SIGINT is at default whatever this process inherited (no code runs between fork and
        # exec, which is what preexec_fn would need, unsafe beside torch's threads).
        runner_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
                                         process_group=0)
        finally:
            if runner_sigint is not None:  # None: a handler not set from Python, which stays
                signal.signal(signal.SIGINT, runner_sigint)
            os.close(terminal)
        self._terminal = controller
        self.err = b""  # everything the child wrote to stderr so far

    def _read(self, deadline: float) -> bool:
        """One chunk of stderr into ``self.err``; False at its end (the child closed it: exited)."""
        ready, _, _ = select.select([self._terminal], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            self.kill()
            raise AssertionError(f"no output from {self.proc.args[:2]} for the safety cap of {SAFETY_CAP_S} s; "
                                 f"its stderr:\n{self.text()[-2000:]}")
        try:
            chunk = os.read(self._terminal, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            chunk = b""
        self.err += chunk
        return bool(chunk)

    def wait_for(self, pattern: bytes) -> re.Match:
        """Read stderr until ``pattern`` appears in it; fails if the child exits first."""
        deadline = time.monotonic() + SAFETY_CAP_S
        while not (found := re.search(pattern, self.err)):
            if not self._read(deadline):
                raise AssertionError(f"the child exited ({self.proc.wait()}) before printing {pattern!r}; its "
                                     f"stderr:\n{self.text()[-2000:]}")
        return found

    def finish(self) -> tuple[int, str, str]:
        """Read stderr to its end, then wait: (exit code, stdout, stderr)."""
        deadline = time.monotonic() + SAFETY_CAP_S
        while self._read(deadline):
            pass
        out = self.proc.stdout.read().decode()
        self.proc.stdout.close()
        os.close(self._terminal)
        return self.proc.wait(timeout=SAFETY_CAP_S), out, self.text()

    def text(self) -> str:
        return self.err.decode(errors="replace").replace("\r\n", "\n")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()  # a failed test leaves no child running
