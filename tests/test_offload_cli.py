"""``--offload`` on every verb that loads a FLUX.2 model: validated before loading, shown in --help with its
default, passed to ``load_flux2`` as its ``offload=``."""

from __future__ import annotations

import json

import pytest

import fluxlab
import fluxlab.models.load
from fluxlab.cli import main

# Each verb that loads a model the user names (a Hub id included), with what it needs besides --offload.
VERBS = {
    "generate": ["generate"],
    "compare": ["compare", "--inputs", "none", "--no-images"],
    "frontier": ["frontier", "--backends", "sdpa_math", "--model", "tiny"],
    "locate-drift": ["locate-drift", "--bad", "sdpa_math", "--model", "tiny"],
    "autotune": ["autotune", "--model", "tiny"],
}


class Loaded(Exception):
    """Raised by the spy in place of loading: the test has seen what load_flux2 was asked."""


@pytest.fixture
def load_spy(monkeypatch):
    """load_flux2's keyword arguments, recorded instead of loading (the verb stops there)."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        raise Loaded

    # fluxlab.load_flux2 first: it resolves lazily from fluxlab.models.load, and must be saved (and restored) as the
    # real function, not as the spy patched there.
    monkeypatch.setattr(fluxlab, "load_flux2", spy)  # compare's sweep calls fluxlab.load_flux2
    monkeypatch.setattr(fluxlab.models.load, "load_flux2", spy)  # generate and the decide verbs import it per call
    return seen


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offloading_on_the_cpu_is_one_line_exit_2_before_loading(verb, mode, tmp_path, capsys, load_spy):
    out = tmp_path / "out"
    assert main([*VERBS[verb], "--offload", mode, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fluxlab {verb}: error: --offload {mode} keeps the weights in host memory and moves them to a GPU "
                   "when they run, but --device cpu is the CPU; use --offload none (or auto, which means none "
                   "without a GPU)"]
    assert load_spy == [] and not out.exists()


def test_unknown_offload_is_refused_with_the_choices(tmp_path, capsys, load_spy):
    assert main(["generate", "--offload", "cpu", "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--offload: invalid choice: 'cpu' (choose from 'none', 'model', 'sequential', 'auto')" in line
    assert load_spy == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", list(VERBS))
def test_help_shows_offload_and_its_default(verb, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main([VERBS[verb][0], "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--offload {none,model,sequential,auto}" in text
    assert "auto (the first that fits free GPU memory; none without a GPU)" in text and "(default: none)" in text


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("given, passed", [(None, None), ("none", None), ("auto", "auto")])
def test_offload_reaches_load_flux2(verb, given, passed, tmp_path, load_spy, capsys):
    argv = [*VERBS[verb], "--device", "cpu", "--out", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(Loaded):
        main(argv + (["--offload", given] if given else []))
    assert [call["offload"] for call in load_spy] == [passed]  # None: load_flux2's own default
    assert not (tmp_path / "out").exists()


def test_generate_offload_auto_on_the_cpu_means_none_and_the_manifest_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--offload", "auto", "--device", "cpu", "--steps", "1", "--size", "32",
                 "--max-sequence-length", "16", "--backends", "sdpa", "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "sdpa" / "manifest.json").read_text())
    offload = manifest["model"]["offload"]
    assert offload["requested"] == "auto" and offload["mode"] is None and offload["device"] == "cpu"
    assert "no accelerator here, so no offload" in offload["reason"]
    assert offload["estimate"]["height"] == 32 and offload["estimate"]["width"] == 32  # estimated at --size
