"""Ctrl-C in ``fluxlab generate`` with real SIGINTs (``signal.raise_signal``, what a terminal's Ctrl-C delivers) at
known points of a real tiny-model generation: the first one stops after the current step and writes that backend's
partial image whole; a second one while it is written stops at once and leaves nothing of it; a process started
with SIGINT ignored (``nohup``, ``cmd &`` in a script) keeps ignoring it. Each test sets this process's SIGINT
disposition itself, whatever the runner's was. The real entry point in a child process: tests/test_cli.py."""

from __future__ import annotations

import json
import signal

import pytest

import fluxlab.models.generate
import fluxlab.models.load
from fluxlab.cli import main
from fluxlab.outputs import RUN_FILE

pytestmark = pytest.mark.skipif(not hasattr(signal, "raise_signal") or not hasattr(signal, "SIGINT"),
                                reason="needs SIGINT")

STEPS = 4
ARGS = ["generate", "--model", "tiny", "--backends", "sdpa,reference", "--steps", str(STEPS), "--size", "64",
        "--max-sequence-length", "16", "--no-progress"]


@pytest.fixture
def sigint_disposition():
    """``set(disposition)`` for this test; the runner's disposition comes back after it."""
    before = signal.getsignal(signal.SIGINT)
    yield lambda disposition: signal.signal(signal.SIGINT, disposition)
    signal.signal(signal.SIGINT, signal.SIG_DFL if before is None else before)


def ctrl_c():
    signal.raise_signal(signal.SIGINT)  # to this thread; Python runs the handler before raise_signal returns


@pytest.fixture
def ctrl_c_in_step(monkeypatch):
    """The CLI's own load_flux2, plus a real Ctrl-C at the start of the transformer call of step ``n`` (one call
    per step on this model)."""
    real_load = fluxlab.models.load.load_flux2

    def arm(n: int):
        def load(*args, **kwargs):
            pipe = real_load(*args, **kwargs)
            calls = []

            def before_forward(_module, _args):
                calls.append(1)
                if len(calls) == n:
                    ctrl_c()

            pipe.transformer.register_forward_pre_hook(before_forward)
            return pipe

        monkeypatch.setattr(fluxlab.models.load, "load_flux2", load)

    return arm


def test_first_ctrl_c_stops_after_the_current_step(tmp_path, capsys, sigint_disposition, ctrl_c_in_step):
    sigint_disposition(signal.default_int_handler)  # what Python sets up in a process started from a terminal
    ctrl_c_in_step(2)
    assert main([*ARGS, "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert "stopping after the current step (Ctrl-C again to stop at once)" in err
    assert f"interrupted after step 2 of {STEPS} on sdpa" in err and "not run: reference" in err
    manifest = json.loads((tmp_path / "out" / "sdpa" / "manifest.json").read_text())
    assert manifest["interrupted"] is True and manifest["completed_steps"] == 2
    assert sorted(p.name for p in (tmp_path / "out" / "sdpa").iterdir()) == ["image.partial.png", "manifest.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before afterwards


@pytest.mark.parametrize("writer", ["write_png", "write_json"])  # during the image, or after it, during the manifest
def test_second_ctrl_c_while_the_partial_output_is_written_stops_at_once(writer, tmp_path, capsys, monkeypatch,
                                                                         sigint_disposition, ctrl_c_in_step):
    sigint_disposition(signal.default_int_handler)
    ctrl_c_in_step(2)
    real_writer = getattr(fluxlab.models.generate, writer)
    reached = []

    def ctrl_c_again(*args, **kwargs):
        reached.append(writer)
        ctrl_c()  # raises KeyboardInterrupt here unless fluxlab still defers Ctrl-C
        return real_writer(*args, **kwargs)

    monkeypatch.setattr(fluxlab.models.generate, writer, ctrl_c_again)
    out = tmp_path / "out"
    assert main([*ARGS, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert reached == [writer]  # the second Ctrl-C came while sdpa's partial output was being written
    assert "stopping after the current step" in err
    assert "interrupted while writing sdpa's image; nothing was written for it (Ctrl-C, exit code 130)" in err
    assert not out.exists()  # no half of sdpa's output, reference never started: nothing at all, no empty folder


def test_ctrl_c_stays_ignored_when_the_process_started_with_it_ignored(tmp_path, capsys, sigint_disposition,
                                                                       ctrl_c_in_step):
    """``nohup fluxlab generate ... &``: the Unix convention (and Python's own) is that the job keeps ignoring
    SIGINT; fluxlab does not turn Ctrl-C back on. It ends with SIGTERM (``kill``) instead."""
    sigint_disposition(signal.SIG_IGN)  # as Python leaves it in a process that inherited SIGINT ignored
    ctrl_c_in_step(2)
    out = tmp_path / "out"
    assert main([*ARGS, "--out", str(out)]) == 0
    assert "stopping" not in capsys.readouterr().err
    for backend in ("sdpa", "reference"):
        manifest = json.loads((out / backend / "manifest.json").read_text())
        assert manifest["interrupted"] is False and manifest["completed_steps"] == STEPS
        assert (out / backend / "image.png").is_file()
    assert json.loads((out / RUN_FILE).read_text())["files"] == [
        "reference/image.png", "reference/manifest.json", "sdpa/image.png", "sdpa/manifest.json"]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
