"""Attacks a careless or hostile user could make, each once a silent wrong answer or a deletion: every one is now
refused with a message naming the problem (or judged correctly), and nothing outside a run folder is touched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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


# -- compare_images judges its reference too ------------------------------------------------------------------------


def _nan_kernel(q, k, v, *, scale, **_):
    return torch.full_like(q, float("nan"))


def _scale_1_5(q, k, v, *, scale, **_):
    """An otherwise exact kernel whose softmax scale is 1.5x too large: close, finite, and wrong."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.5 * scale)
    return out.transpose(1, 2)


@pytest.fixture(scope="module")
def tiny_pipe_with_bad_kernels():
    import fluxlab
    from fluxlab.models.attach import attach, detach
    from fluxlab.models.supported import FLUX2_BACKENDS

    pipe = fluxlab.load_flux2("tiny", variant="dev")
    fluxlab.register_backend("attack_nan", _nan_kernel)
    fluxlab.register_backend("attack_scale_1_5", _scale_1_5)
    detach(pipe)
    attach(pipe, allowed=FLUX2_BACKENDS | {"attack_nan", "attack_scale_1_5"})
    yield pipe
    detach(pipe)
    fluxlab.unregister_backend("attack_nan")
    fluxlab.unregister_backend("attack_scale_1_5")


SMALL = dict(steps=2, seeds=(0, 1), height=32, width=32)


@pytest.mark.slow
@pytest.mark.parametrize("first, why", [("attack_nan", "gives NaN/inf at seed 0"),
                                        ("attack_scale_1_5", "is not exact at seed 0: against the float64")])
def test_a_broken_first_backend_is_not_a_reference_that_passes_itself(tiny_pipe_with_bad_kernels, first, why):
    from fluxlab.compare.images import compare_images
    from fluxlab.errors import BadReferenceError

    with pytest.raises(BadReferenceError, match=re.escape(why)) as caught:
        compare_images(tiny_pipe_with_bad_kernels, [first, "sdpa"], **SMALL)
    assert "reference='sdpa'" in str(caught.value)  # the fix is named


@pytest.mark.slow
def test_the_same_broken_kernels_fail_when_an_exact_backend_is_the_reference(tiny_pipe_with_bad_kernels):
    from fluxlab.compare.images import compare_images

    result = compare_images(tiny_pipe_with_bad_kernels, ["sdpa", "attack_nan", "attack_scale_1_5"], **SMALL)
    assert result.verdicts == {"sdpa": "pass", "attack_nan": "fail", "attack_scale_1_5": "fail"}
    assert "against the float64 'reference' backend" in result.metrics["sdpa"].verdict_note


@pytest.mark.parametrize("call", [dict(backends=["emu_sage", "sdpa"], reference="emu_sage"),
                                  dict(backends=["emu_sage", "emu_bf16"])], ids=["named", "all-approximate"])
def test_an_approximate_reference_is_refused_before_any_generation(monkeypatch, call):
    import fluxlab.compare.images as images
    from fluxlab.errors import BadReferenceError

    def refuse(*_a, **_k):
        raise AssertionError("a generation started before the reference was refused")

    monkeypatch.setattr(images, "_generate", refuse)
    with pytest.raises(BadReferenceError, match="approximate"):
        images.compare_images(object(), call["backends"], reference=call.get("reference"), steps=1)


@pytest.mark.slow
def test_an_approximate_first_backend_is_judged_against_an_exact_default_reference(tiny_pipe_with_bad_kernels):
    from fluxlab.compare.images import compare_images

    result = compare_images(tiny_pipe_with_bad_kernels, ["emu_sage", "sdpa"], **SMALL)
    assert result.reference == "sdpa"
    assert "the reference" not in result.metrics["emu_sage"].verdict_note
