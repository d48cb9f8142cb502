"""Attacks a careless or hostile user could make, each once a silent wrong answer or a deletion: every one is now
refused with a message naming the problem (or judged correctly), and nothing outside a run folder is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxlab.outputs import RUN_FILE

FLUXLAB = Path(sys.executable).with_name("fluxlab")  # the installed entry point of this venv
REPO = Path(__file__).resolve().parents[1]


def _fluxlab(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's fluxlab, not whichever is installed
    return subprocess.run([str(FLUXLAB), *argv], capture_output=True, text=True, env=env, timeout=600)


def _plant(out: Path, victim: Path, how: str) -> None:
    """A results folder received from someone else: its run file names the victim by one route out."""
    out.mkdir()
    if how == "absolute":
        listed = [str(victim)]
    elif how == "parent":
        listed = [os.path.relpath(victim, out)]
    elif how == "link-to-folder":
        (out / "sdpa").symlink_to(victim.parent, target_is_directory=True)
        listed = [f"sdpa/{victim.name}"]
    elif how == "link-to-file":
        (out / "image.png").symlink_to(victim)
        listed = ["image.png"]
    elif how == "run-file-is-a-link":
        decoy = victim.parent / "decoy.json"
        decoy.write_text(json.dumps({"files": [victim.name]}))
        (out / RUN_FILE).symlink_to(decoy)
        return
    else:
        raise AssertionError(how)
    (out / RUN_FILE).write_text(json.dumps({"verb": "generate", "files": listed}))


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("how", ["absolute", "parent", "link-to-folder", "link-to-file", "run-file-is-a-link"])
def test_a_planted_run_file_cannot_delete_anything_outside_the_run_folder(tmp_path, how, overwrite):
    victim = tmp_path / "home" / "precious" / "important.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("irreplaceable")
    out = tmp_path / "received-results"
    _plant(out, victim, how)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    beside_victim = sorted(p.name for p in victim.parent.iterdir())

    done = _fluxlab("generate", "--model", "tiny", "--backends", "sdpa", "--steps", "1", "--size", "32",
                    "--max-sequence-length", "16", "--no-progress", "--out", str(out),
                    *(["--overwrite"] if overwrite else []))

    assert victim.read_text() == "irreplaceable"  # the victim and its folder survive
    assert sorted(p.name for p in victim.parent.iterdir()) == beside_victim
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "deletes nothing" in done.stderr or "links that lead out of the folder" in done.stderr, done.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # the folder itself untouched


def test_a_run_file_naming_only_its_own_files_still_replaces_them(tmp_path):
    """The guard refuses routes out, not fluxlab's own earlier files: a re-run replaces them."""
    out = tmp_path / "run"
    args = ["generate", "--model", "tiny", "--backends", "sdpa", "--steps", "1", "--size", "32",
            "--max-sequence-length", "16", "--no-progress", "--out", str(out)]
    assert _fluxlab(*args).returncode == 0
    (out / "sdpa" / "stale.txt").write_text("from an older fluxlab")  # listed as its own: it goes
    listed = json.loads((out / RUN_FILE).read_text())
    (out / RUN_FILE).write_text(json.dumps({**listed, "files": [*listed["files"], "sdpa/stale.txt"]}))
    done = _fluxlab(*args)
    assert done.returncode == 0, done.stderr
    assert not (out / "sdpa" / "stale.txt").exists()
    assert (out / "sdpa" / "image.png").is_file()
