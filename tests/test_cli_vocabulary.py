"""One command-line vocabulary: every default shown in --help, the same flag and default for the same meaning in
every verb, the embedded model (which draws its captions) as the default model, fast --help/--version, mistakes
refused before any model loads, and no carriage returns in pipes."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fluxlab.cli import build_parser, main
from fluxlab.command import DEFAULT_MODEL, DEFAULT_PROMPT, EXIT_NO_DEVICE, EXIT_USAGE, VERBS
from _child import SAFETY_CAP_S  # a hang guard, not a speed budget

ROOT = Path(__file__).resolve().parents[1]


def _parsers():
    """(name, parser) of every verb and sub-verb, from the full parser."""
    found = []

    def walk(prefix, parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((f"{prefix} {name}".strip(), child))
                    walk(f"{prefix} {name}", child)

    walk("", build_parser())
    return found


PARSERS = dict(_parsers())


def _shows_default(action) -> bool:
    return not (action.default is None or action.default is False or action.default == []
                or action.default == argparse.SUPPRESS or isinstance(action, argparse._HelpAction))


def test_every_verb_is_walked():
    assert set(VERBS) <= set(PARSERS)
    assert {"parallel check", "parallel compare"} <= set(PARSERS)


@pytest.mark.parametrize("verb", sorted(PARSERS))
def test_every_option_with_a_default_shows_it_in_help(verb, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping inside a default
    parser = PARSERS[verb]
    missing = []
    for action in parser._actions:
        if not action.option_strings or not _shows_default(action):
            continue
        formatter = parser._get_formatter()  # the entry --help prints for this option, as format_help builds it
        formatter.add_argument(action)
        entry = " ".join(formatter.format_help().split())
        assert entry.split()[0] in parser.format_help()
        if f"(default: {action.default})" not in entry and "(default:" not in entry:
            missing.append(f"{', '.join(action.option_strings)} (default {action.default!r}): {entry!r}")
    assert not missing, f"`fluxlab {verb} --help` hides these defaults: {missing}"


@pytest.mark.parametrize("verb", sorted(PARSERS))
def test_every_option_has_help_text(verb):
    blank = [", ".join(a.option_strings) for a in PARSERS[verb]._actions
             if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()
             and not _shows_default(a)]
    assert not blank, f"`fluxlab {verb} --help` shows these options with no text: {blank}"


def _option(verb: str, flag: str):
    return next((a for a in PARSERS[verb]._actions if flag in a.option_strings and a.help != argparse.SUPPRESS),
                None)


MODEL_VERBS = ["demo", "generate", "compare", "locate-drift", "frontier", "autotune", "parallel check"]


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_the_embedded_model_is_every_verbs_default(verb):
    assert _option(verb, "--model").default == DEFAULT_MODEL == "embedded"


def test_the_same_flag_means_the_same_in_every_verb():
    prompts = {verb: _option(verb, "--prompt").default for verb in PARSERS if _option(verb, "--prompt")}
    assert set(prompts) == {"generate", "compare", "locate-drift", "frontier", "autotune"}
    assert set(prompts.values()) == {DEFAULT_PROMPT}
    # Several backends: --backends everywhere (--candidates is an old, hidden spelling); one seed: --seed; several
    # seeds: --seeds; an image size: --size (parallel's --height/--width are old spellings).
    for verb, parser in PARSERS.items():
        shown = {flag for a in parser._actions if a.help != argparse.SUPPRESS for flag in a.option_strings}
        assert not shown & {"--candidates", "--height", "--width", "--source", "--backend"}, verb
    assert {verb for verb in PARSERS if _option(verb, "--backends")} >= {"generate", "compare", "bench", "frontier",
                                                                        "autotune", "parallel check",
                                                                        "parallel compare"}
    for verb in ("generate", "locate-drift", "parallel compare"):
        assert _option(verb, "--seed").default == 0 and _option(verb, "--seeds") is None, verb
    for verb in ("frontier", "autotune"):
        assert _option(verb, "--seeds").default == "0" and _option(verb, "--seed") is None, verb
    for verb in ("generate", "locate-drift", "frontier", "autotune", "parallel check", "parallel compare"):
        assert _option(verb, "--size") is not None, verb


def test_old_spellings_reach_the_new_options(tmp_path, capsys, no_work):
    out = str(tmp_path / "o")
    assert main(["frontier", "--candidates", "sdpa_math", "--seed", "0,-1", "--out", out]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "note: --candidates is deprecated; use --backends" in err and "got -1" in err
    assert main(["locate-drift", "--bad", "sdpa_math", "--seeds", "0,1", "--out", out]) == EXIT_USAGE
    assert "'0,1' is not a seed" in capsys.readouterr().err  # one seed only where the verb runs one


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_import_no_torch(argv):
    code = ("import sys\nfrom fluxlab.cli import main\ncode = main(%r)\n"
            "assert code == 0, code\nprint('torch' in sys.modules)" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=SAFETY_CAP_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"  # no torch: the parser alone, as `fluxlab --help` runs it


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a verb gets as far as loading a model or starting its work."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded / the work started before the mistake was reported")

    import fluxlab.compare.sweep
    import fluxlab.models.load
    import fluxlab.parallel

    monkeypatch.setattr(fluxlab.models.load, "load_flux2", refuse)
    monkeypatch.setattr(fluxlab.compare.sweep, "run_compare", refuse)
    monkeypatch.setattr(fluxlab.parallel, "compare_parallel", refuse)


# (id, argv with OUT for the output folder, fragments of the one-line error): each refused before any model loads.
MISTAKES = [
    ("same-kernel-three-times", ["generate", "--backends", "sdpa,SDPA,native", "--out", "OUT"],
     ["--backends names the same kernel more than once", "sdpa, SDPA, native are all sdpa"]),
    ("compare-same-kernel", ["compare", "--backends", "sdpa_math,SDPA_MATH", "--out", "OUT"],
     ["names the same kernel more than once"]),
    ("good-is-one-backend", ["locate-drift", "--good", "sdpa,flex", "--bad", "sdpa_math", "--out", "OUT"],
     ["--good takes one backend, got 2 (sdpa,flex)"]),
    ("good-equals-bad", ["locate-drift", "--bad", "sdpa", "--out", "OUT"],
     ["--good and --bad are both sdpa", "no drift to locate"]),
    ("bad-steps-outside", ["locate-drift", "--bad", "sdpa_math", "--bad-steps", "99", "--out", "OUT"],
     ["--bad-steps 99: [99] outside the 4 steps"]),
    ("exact-not-exact", ["frontier", "--backends", "sdpa_math", "--exact", "emu_aiter_sage", "--out", "OUT"],
     ["--exact emu_aiter_sage is quantised or emulated, not exact"]),
    ("parallel-degree-0", ["compare", "--parallel", "ulysses=0", "--out", "OUT"],
     ["--parallel ulysses=0: a parallel mode splits over at least 2 ranks"]),
    ("parallel-one-rank", ["parallel", "check", "--parallel", "ring=1", "--backends", "sdpa"],
     ["at least 2 ranks"]),
    ("device-meta", ["generate", "--device", "meta", "--out", "OUT"], ["--device meta: fluxlab runs on cpu or cuda"]),
    ("device-banana", ["locate-drift", "--bad", "sdpa_math", "--device", "banana", "--out", "OUT"],
     ["--device 'banana' is not a torch device"]),
    ("beam-0", ["locate-drift", "--bad", "sdpa_math", "--beam", "0", "--out", "OUT"],
     ["--beam: must be at least 1, got 0"]),
    ("budget-1", ["locate-drift", "--bad", "sdpa_math", "--budget", "1", "--out", "OUT"],
     ["--budget 1: locating drift needs at least 2 generations"]),
    ("negative-seeds", ["frontier", "--backends", "sdpa_math", "--seeds", "0,-1", "--out", "OUT"],
     ["--seeds: seed must be a whole number from 0 to 2**63 - 1, got -1"]),
    ("repeated-seeds", ["autotune", "--seeds", "1,1", "--out", "OUT"], ["repeats a seed"]),
    ("only-emulated-candidates", ["autotune", "--backends", "emu_sage,emu_aiter", "--out", "OUT"],
     ["all quantised or emulated", "--allow-quantised"]),
    ("compares-nothing", ["compare", "--inputs", "none", "--model", "none", "--out", "OUT"],
     ["compares nothing"]),
    ("seed-negative", ["locate-drift", "--bad", "sdpa_math", "--seed", "-1", "--out", "OUT"], ["got -1"]),
    ("seed-2**64", ["compare", "--seed", str(2**64), "--out", "OUT"], ["got 18446744073709551616"]),
    ("tiny-size-40", ["locate-drift", "--bad", "sdpa_math", "--model", "tiny", "--size", "40", "--out", "OUT"],
     ["width 40 is not a multiple of 16", "use 32 or 48"]),
    ("frontier-without-backends", ["frontier", "--out", "OUT"], ["frontier needs --backends"]),
    ("repeats-0", ["frontier", "--backends", "sdpa_math", "--repeats", "0", "--out", "OUT"],
     ["--repeats: must be at least 1, got 0"]),
    ("invariance-seed-past-the-end", ["compare", "--invariance", "--seed", str(2**63 - 2), "--out", "OUT"],
     ["--seed to --seed + 3", "pass a smaller --seed"]),
]


@pytest.mark.parametrize("argv, fragments", [c[1:] for c in MISTAKES], ids=[c[0] for c in MISTAKES])
def test_mistake_is_one_line_exit_2_before_any_model_loads(argv, fragments, tmp_path, capsys, no_work):
    out = tmp_path / "out"
    assert main([str(out) if a == "OUT" else a for a in argv]) == EXIT_USAGE
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for fragment in fragments:
        assert fragment in lines[0], f"missing {fragment!r} in:\n{lines[0]}"
    assert not out.exists() and "Traceback" not in captured.out + captured.err


def test_device_cuda_without_a_gpu_is_refused_before_loading(tmp_path, capsys, no_work):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    assert main(["locate-drift", "--bad", "sdpa_math", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert "--device cuda: no CUDA/ROCm device on this machine" in capsys.readouterr().err


def test_bench_without_a_gpu_says_so_on_stderr_with_its_own_exit_code(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench runs")
    assert main(["bench", "--out", str(tmp_path / "b")]) == EXIT_NO_DEVICE == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "fluxlab bench: needs a CUDA or ROCm GPU (it times kernels on one) and this machine has none; run it on a GPU "
        "machine, or `fluxlab compare` for the numerics on a CPU (exit code 3)"]
    assert not (tmp_path / "b").exists()


def test_exit_codes_are_documented_in_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "Exit codes: 0 done; 1 " in text and "; 2 a usage mistake" in text and "; 3 needs a GPU" in text


# -- what runs: the default model draws the default prompt; drift.json stays JSON; pipes get lines -----------------


def test_default_generate_draws_the_default_caption(tmp_path, capsys):
    """`fluxlab generate` with its defaults: the embedded model puts the caption's colours where it says."""
    from PIL import Image

    from training import shapes_data

    out = tmp_path / "run"
    assert main(["generate", "--backends", "sdpa", "--out", str(out)]) == 0
    manifest = json.loads((out / "sdpa" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "embedded" and manifest["prompt"] == DEFAULT_PROMPT
    image = np.asarray(Image.open(out / "sdpa" / "image.png").convert("RGB"))
    # DEFAULT_PROMPT's scene: red circle top left, yellow square bottom right, blue background.
    scene = shapes_data.Scene(background=4, shapes=(shapes_data.Shape(colour=0, shape=0, position=0),
                                                    shapes_data.Shape(colour=2, shape=1, position=8)))
    assert scene.caption == DEFAULT_PROMPT
    assert shapes_data.shape_hits(image, scene) == [True, True]
    assert shapes_data.cell_colour(image, 4) == "blue"


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_drift_json_is_valid_when_the_budget_ends_before_any_region(tmp_path, capsys):
    out = tmp_path / "drift"
    assert main(["locate-drift", "--model", "tiny", "--bad", "sdpa_math", "--steps", "2", "--size", "32",
                 "--max-sequence-length", "16", "--budget", "2", "--no-progress", "--out", str(out)]) == 0
    data = _strict_json((out / "drift.json").read_text())
    assert data["kind"] == "undecided (the budget ended before any region was scored)"
    assert data["share"] is None and data["generations"] == 2
    assert data["settings"]["height"] == 32 and data["settings"]["width"] == 32  # the size that ran


def test_drift_kinds_tell_no_drift_from_nan_from_budget():
    from fluxlab.decide.cli import _json_safe
    from fluxlab.decide.drift import Culprit, DriftMap

    def drift(all_bad, culprits=()):
        return DriftMap(good="sdpa", bad="x", layers=["a", "b"], steps=2, culprits=list(culprits),
                        grid=np.full((2, 2), math.nan), all_bad_drift=all_bad, drift_per_step={}, generations=2,
                        bound=10, complete=False)

    assert drift(0.0).kind.startswith("none")
    assert drift(math.nan).kind.startswith("not finite")
    assert drift(0.3).kind.startswith("undecided")
    assert drift(0.3, [Culprit("a", (0,), 0.29, ("a",))]).kind == "localised"
    for case in (drift(0.0), drift(math.nan), drift(0.3)):
        _strict_json(json.dumps(_json_safe(case.as_dict()), allow_nan=False))


def test_a_piped_run_writes_log_lines_not_bar_frames(tmp_path):
    # The embedded model loads through diffusers' from_pretrained, whose loading bars must stay quiet too.
    done = subprocess.run([sys.executable, "-m", "fluxlab.cli", "generate", "--backends", "sdpa,sdpa_math",
                           "--steps", "2", "--size", "32", "--max-sequence-length", "16", "--out",
                           str(tmp_path / "o")], capture_output=True, cwd=ROOT, timeout=SAFETY_CAP_S)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"\r" not in done.stdout + done.stderr
    err = done.stderr.decode()
    assert "fluxlab generate: 1/4 step [sdpa]" in err and "[sdpa_math]" in err and "done, 4/4 step" in err


def test_log_bar_writes_a_bounded_number_of_lines():
    import io

    from fluxlab.terminal import LogBar, progress_bar

    stream = io.StringIO()
    bar = progress_bar(total=1000, desc="work", unit="step", file=stream)
    assert isinstance(bar, LogBar)  # a StringIO is no terminal
    bar.set_postfix_str("stage one")
    for _ in range(1000):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("work: 0/1000 step [stage one]") and lines[-1].startswith("work: done, 1000/1000")
    assert len(lines) <= 13  # the stage, the first step, each tenth, the end
    assert list(progress_bar(range(3), file=io.StringIO())) == [0, 1, 2]
    assert progress_bar(total=5, disable=True, file=stream) is not None


def test_the_api_defaults_are_the_embedded_model_and_a_caption_it_draws():
    import inspect

    import fluxlab
    from fluxlab.compare import compare_images
    from fluxlab.widgets.gallery import ImageGallery
    from fluxlab.widgets.toggle import BackendToggleDemo

    pipe = fluxlab.load_flux2()  # no argument: the embedded model, not random weights
    assert type(pipe).__name__ == "Flux2KleinPipeline"
    assert pipe.transformer.config.num_attention_heads == 4  # the embedded model's config, not tiny's 2
    for fn in (compare_images, ImageGallery.__init__, BackendToggleDemo.__init__):
        assert inspect.signature(fn).parameters["prompt"].default == DEFAULT_PROMPT, fn


def test_a_failure_of_the_work_is_exit_1_not_a_usage_mistake(tmp_path, capsys, monkeypatch):
    import fluxlab
    import fluxlab.compare.sweep

    def broken(*_args, **_kwargs):
        raise fluxlab.errors.BackendOutputError("sdpa returned NaN (on purpose)")

    monkeypatch.setattr(fluxlab.compare.sweep, "run_compare", broken)
    assert main(["compare", "--model", "none", "--inputs", "smoke", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.strip() == "fluxlab compare: failed: sdpa returned NaN (on purpose)"
    assert not (tmp_path / "o").exists()


def test_records_alone_replay_without_the_synthetic_sweep(tmp_path, capsys):
    import torch

    import fluxlab
    from fluxlab.compare import save_records
    from fluxlab.record import AttentionRecord

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 64, 2, 32, generator=gen).bfloat16() for _ in range(3))
    out = fluxlab.attention(q, k, v, backend="sdpa_math")
    save_records(tmp_path / "rec", [AttentionRecord(q, k, v, scale=32**-0.5, out=out, backend="sdpa_math")])
    assert main(["compare", "--records", str(tmp_path / "rec"), "--model", "none", "--backends", "sdpa",
                 "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Replayed records from" in text and "Synthetic" not in text


def test_lazy_package_keeps_fluxlab_backends_the_function():
    """`import fluxlab` loads torch only on first use; the backends sub-package (imported on the way) must not
    replace the public fluxlab.backends() that lists them."""
    code = ("import sys, fluxlab\nassert 'torch' not in sys.modules\nimport fluxlab.backends.sdpa\n"
            "names = [s.name for s in fluxlab.backends()]\nassert 'sdpa' in names, names\n"
            "assert fluxlab.attention is fluxlab.dispatch.attention\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=SAFETY_CAP_S)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
