"""The ``fluxlab`` command: every user mistake is one line on stderr and exit code 2 before any model loads, no
folder is left behind, used folders are refused or cleaned, one vocabulary across verbs, Ctrl-C exits 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fluxlab
from fluxlab.cli import main
from fluxlab.outputs import RUN_FILE

from _child import SAFETY_CAP_S, Child

FLUXLAB = Path(sys.executable).with_name("fluxlab")  # the installed entry point of this venv


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a verb gets as far as loading a model or starting its work."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded / the work started before the mistake was reported")

    import fluxlab.compare.sweep
    import fluxlab.demo
    import fluxlab.models.load
    import fluxlab.parallel

    monkeypatch.setattr(fluxlab.models.load, "load_flux2", refuse)
    monkeypatch.setattr(fluxlab.demo, "run_demo", refuse)
    monkeypatch.setattr(fluxlab.compare.sweep, "run_compare", refuse)
    monkeypatch.setattr(fluxlab.parallel, "compare_parallel", refuse)


# (id, argv with OUT for the output folder, fragments of the one-line error)
MISTAKES = [
    ("generate-unknown-backend", ["generate", "--backends", "sdpa,sdpa_flsh", "--out", "OUT"],
     ["unknown attention backend 'sdpa_flsh'", "Did you mean 'sdpa_flash'"]),
    ("generate-not-a-multiple", ["generate", "--model", "tiny", "--size", "40", "--out", "OUT"],
     ["width 40 is not a multiple of 16", "use 32 or 48"]),
    ("generate-embedded-not-a-multiple", ["generate", "--size", "36", "--out", "OUT"],
     ["width 36 is not a multiple of 8", "use 32 or 40"]),
    ("generate-16384", ["generate", "--size", "16384x16384", "--out", "OUT"],
     ["4,194,304 image tokens", "bound of 16,384", "GiB", "--force"]),
    ("generate-text-100000", ["generate", "--max-sequence-length", "100000", "--out", "OUT"],
     ["max_sequence_length 100,000 is above fluxlab's bound of 512", "--force"]),
    ("generate-steps-0", ["generate", "--steps", "0", "--out", "OUT"], ["steps must be a whole number >= 1, got 0"]),
    ("generate-empty-prompt", ["generate", "--prompt", " ", "--out", "OUT"],
     ["prompt must be a non-empty text, got ' '"]),
    ("generate-steps-1.5", ["generate", "--steps", "1.5", "--out", "OUT"], ["--steps: invalid int value: '1.5'"]),
    ("generate-steps-beyond", ["generate", "--steps", "5000", "--out", "OUT"], ["above fluxlab's bound of 1000"]),
    ("generate-seed-2**64", ["generate", "--seed", str(2**64), "--out", "OUT"],
     ["seed must be a whole number from 0 to 2**63 - 1, got 18446744073709551616"]),
    ("generate-seed-negative", ["generate", "--seed", "-1", "--out", "OUT"], ["got -1"]),
    ("generate-bad-dtype", ["generate", "--dtype", "fp8", "--out", "OUT"], ["--dtype: invalid choice: 'fp8'"]),
    ("generate-missing-model", ["generate", "--model", "no/such/folder", "--out", "OUT"],
     ["--model no/such/folder: no such folder"]),
    ("generate-bad-device", ["generate", "--device", "gpu0", "--out", "OUT"], ["'gpu0' is not a torch device"]),
    ("generate-wrong-platform", ["generate", "--backends", "aiter", "--device", "cpu", "--out", "OUT"],
     ["cannot run here", "aiter runs on amd"]),
    ("generate-empty-backends", ["generate", "--backends", ",", "--out", "OUT"], ["no backend given"]),
    ("generate-guidance-nan", ["generate", "--guidance-scale", "nan", "--out", "OUT"],
     ["guidance_scale must be a finite number >= 0", "got nan"]),
    ("generate-out-not-creatable", ["generate", "--out", "/proc/fluxlab-no-such/out"],
     ["--out /proc/fluxlab-no-such/out"]),
    ("compare-missing-records", ["compare", "--records", "no-such-records", "--out", "OUT"],
     ["--records no-such-records: no manifest.json there"]),
    ("compare-bad-dtype", ["compare", "--dtypes", "bf16,bf17", "--out", "OUT"], ["unknown dtype 'bf17'"]),
    ("compare-unknown-backend", ["compare", "--backends", "sdpa,nope", "--out", "OUT"],
     ["unknown attention backend 'nope'"]),
    ("compare-bad-seeds", ["compare", "--seeds", "0,x", "--out", "OUT"], ["'x' is not a seed"]),
    ("compare-steps-0", ["compare", "--steps", "0", "--out", "OUT"], ["steps must be a whole number >= 1"]),
    ("compare-missing-model", ["compare", "--model", "./no-model", "--out", "OUT"], ["--model ./no-model"]),
    ("compare-bad-parallel-mode", ["compare", "--parallel", "ulysses=x", "--out", "OUT"],
     ["cannot read parallel mode 'ulysses=x'"]),
    ("compare-bad-format", ["compare", "--format", "pdf", "--out", "OUT"], ["--format: invalid choice: 'pdf'"]),
    ("demo-missing-model", ["demo", "--model", "./no-model", "--out", "OUT"], ["--model ./no-model: no such folder"]),
    ("doctor-bad-profile", ["doctor", "--profile", "tpu"], ["--profile: invalid choice: 'tpu'"]),
    ("parallel-bad-mode", ["parallel", "check", "--parallel", "ulysses=x", "--backends", "sdpa"],
     ["cannot read parallel mode"]),
    ("parallel-bad-profile", ["parallel", "check", "--parallel", "ring=2", "--backends", "sdpa", "--profile", "tpu"],
     ["--profile: invalid choice: 'tpu'"]),
    ("parallel-unknown-backend", ["parallel", "compare", "--parallel", "ring=2", "--backends", "sdpx"],
     ["unknown attention backend 'sdpx'", "Did you mean 'sdpa'"]),
    ("parallel-bad-setup", ["parallel", "compare", "--parallel", "ring=2", "--backends", "sdpa", "--setup",
                            "no_such_module_here:setup"], ["--setup", "no module 'no_such_module_here'"]),
    ("parallel-bad-size", ["parallel", "check", "--parallel", "ring=2", "--backends", "sdpa", "--model", "tiny",
                           "--size", "40"], ["width 40 is not a multiple of 16"]),
    ("unknown-verb", ["generat"], ["invalid choice: 'generat'"]),
]


@pytest.mark.parametrize("argv, fragments", [c[1:] for c in MISTAKES], ids=[c[0] for c in MISTAKES])
def test_mistake_is_one_line_and_exit_2_before_any_work(argv, fragments, tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main([str(out) if a == "OUT" else a for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fluxlab")
    for fragment in fragments:
        assert fragment in lines[0], f"missing {fragment!r} in:\n{lines[0]}"
    assert not out.exists()  # no empty folder left behind
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("verb", [["generate"], ["compare"], ["demo"]])
def test_out_pointing_at_a_file_is_refused_before_work(verb, tmp_path, capsys, no_work):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    assert main([*verb, "--out", str(target)]) == 2
    assert f"--out {target} is a file" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_bad_environment_backend_names_the_variable(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setenv("FLUXLAB_ATTENTION_BACKEND", "sdpa_flsh")
    assert main(["generate", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "$FLUXLAB_ATTENTION_BACKEND='sdpa_flsh' is not a usable backend" in err and "unset it" in err
    assert not (tmp_path / "out").exists()
    assert main(["doctor"]) == 0  # doctor still lists the names, with the same note
    assert "note: $FLUXLAB_ATTENTION_BACKEND='sdpa_flsh'" in capsys.readouterr().err


def test_used_folder_is_refused_with_the_way_to_overwrite(tmp_path, capsys, no_work):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["generate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds files fluxlab did not write in an earlier run (notes.txt)" in err
    assert "--overwrite" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rerun_replaces_fluxlabs_own_files_and_overwrite_keeps_the_users(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["generate", "--steps", "1", "--size", "32", "--max-sequence-length", "16", "--no-progress",
              "--out", str(out)]
    assert main([*common, "--backends", "sdpa"]) == 0
    listed = json.loads((out / RUN_FILE).read_text())
    assert listed == {"verb": "generate", "files": ["sdpa/image.png", "sdpa/manifest.json"]}
    # The same verb into its own folder: the earlier run's files go, no --overwrite needed.
    assert main([*common, "--backends", "sdpa_math"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE, "sdpa_math"]
    # A file of the user's: refused without --overwrite; with it, kept while fluxlab's own are replaced.
    (out / "notes.txt").write_text("mine")
    assert main([*common, "--backends", "reference"]) == 2
    assert main([*common, "--backends", "reference", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE, "notes.txt", "reference"]
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / RUN_FILE).read_text())["files"] == ["reference/image.png", "reference/manifest.json"]


def test_a_backend_failing_during_the_work_is_exit_1_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import fluxlab.models.generate

    def broken(*_args, **_kwargs):
        raise fluxlab.errors.BackendOutputError("sdpa returned shape (1, 2) (on purpose)")

    monkeypatch.setattr(fluxlab.models.generate, "generate", broken)
    out = tmp_path / "deep" / "out"
    assert main(["generate", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "fluxlab generate: failed: sdpa returned shape (1, 2) (on purpose)"
    assert not (tmp_path / "deep").exists()  # every folder this run made is gone again


def test_old_spellings_still_work_with_a_note(tmp_path, capsys, no_work):
    assert main(["generate", "--source", "no/such/folder", "--backend", "sdpa", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "note: --source is deprecated; use --model" in err
    assert "note: --backend is deprecated; use --backends" in err
    assert "--model no/such/folder: no such folder" in err  # the old spelling reached --model
    assert main(["parallel", "check", "--parallel", "ulysses=2", "--backends", "sdpa", "--size", "tiny"]) == 0
    assert "note: --size tiny is deprecated; use --model tiny" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fluxlab {fluxlab.__version__}"


def test_doctor_json_is_machine_readable(capsys):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fluxlab"] == fluxlab.__version__
    assert data["platform"] == fluxlab.current_platform().as_dict()
    rows = {row["name"]: row for row in data["backends"]}
    assert list(rows) == [status.name for status in fluxlab.backends()]
    for row in rows.values():
        assert {"available", "reasons", "version", "default"} <= set(row)
        assert row["available"] == (not row["reasons"])
    assert [name for name, row in rows.items() if row["default"]] == [fluxlab.dispatch.default_backend()]
    assert main(["doctor", "--json", "--profile", "mi300x"]) == 0
    mi300x = json.loads(capsys.readouterr().out)
    assert mi300x["platform"]["vendor"] == "amd"
    assert next(r for r in mi300x["backends"] if r["name"] == "sdpa_cudnn")["available"] is False


@pytest.mark.parametrize("verb, shown", [
    (["generate"], ["(default: fluxlab-generate)", "(default: 4)", "(default: embedded)", "(default: auto)"]),
    (["compare"], ["(default: fluxlab-compare)", "(default: bf16)"]),
    (["demo"], ["(default: fluxlab-demo)", "(default: embedded)"]),
    (["parallel", "compare"], ["(default: sdpa)", "(default: tiny)"]),
])
def test_help_shows_defaults_and_one_vocabulary(verb, shown, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no line wrapping inside a default
    assert main([*verb, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in shown:
        assert fragment in text, f"missing {fragment!r}"
    for old in ("--source", "--backend ", "--size {"):
        assert old not in text  # deprecated spellings are accepted, not advertised


def test_real_entry_point_mistake_is_one_line_exit_2(tmp_path):
    done = subprocess.run([str(FLUXLAB), "generate", "--model", "tiny", "--size", "40", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=SAFETY_CAP_S)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fluxlab generate: error: width 40 is not a multiple of 16 (this model's VAE scale x 2x2 latent patches; "
        "diffusers would silently shrink it to 32): use 32 or 48"]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process is POSIX")
def test_sigint_stops_a_real_generation_between_steps(tmp_path):
    out = tmp_path / "run"
    steps = 1000
    with Child([str(FLUXLAB), "generate", "--model", "tiny", "--backends", "sdpa,reference", "--steps", str(steps),
                "--size", "64", "--max-sequence-length", "16", "--out", str(out)]) as child:
        child.wait_for(rb"\b[1-9]\d*/%d\b" % (2 * steps))  # the bar (2 backends) shows a finished step
        child.proc.send_signal(signal.SIGINT)
        code, _, err = child.finish()
    assert code == 130, err
    assert "stopping after the current step" in err
    assert "interrupted after step" in err and "not run: reference" in err
    manifest = json.loads((out / "sdpa" / "manifest.json").read_text())
    assert manifest["interrupted"] is True and 1 <= manifest["completed_steps"] < steps
    assert len(manifest["timings"]["steps_s"]) == manifest["completed_steps"]
    assert manifest["image"] == "image.partial.png" and (out / "sdpa" / "image.partial.png").is_file()
    assert not (out / "sdpa" / "image.png").exists() and not (out / "reference").exists()
    assert not list(out.rglob("*.tmp"))  # nothing half-written
    assert json.loads((out / RUN_FILE).read_text())["files"] == ["sdpa/image.partial.png", "sdpa/manifest.json"]


def test_demo_rerun_into_its_own_folder(tmp_path, capsys, monkeypatch):
    """`make demo` twice: the second run replaces the first one's files instead of refusing."""
    import fluxlab.demo

    def fake_demo(out_dir, source, progress=True):  # the real demo is covered in test_flux2_generate_cli; here: the folder rules
        (Path(out_dir) / "grid.png").write_bytes(b"png")
        return 0

    monkeypatch.setattr(fluxlab.demo, "run_demo", fake_demo)
    out = tmp_path / "fluxlab-demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert main(["demo", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [RUN_FILE, "grid.png"]



def test_readme_limits_table_matches_the_bounds():
    from fluxlab.models.limits import BOUNDS

    readme = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()  # README links it
    section = readme.split("### Limits, Ctrl-C and the command line")[1].split("\n#")[0]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| bound")}
    assert rows == {"image tokens, (height/16) x (width/16)": str(BOUNDS["image_tokens"].high),
                    "image side": f"{BOUNDS['side'].high} px",
                    "`max_sequence_length`": str(BOUNDS["max_sequence_length"].high),
                    "steps": str(BOUNDS["steps"].high)}
